"""``python -m mini_ipam``: the ``mini-ipam`` command."""

import sys

from mini_ipam.commands import main

sys.exit(main())
