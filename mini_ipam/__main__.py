import sys

from mini_ipam.cli import main

sys.exit(main())
