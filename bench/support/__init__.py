"""What the benchmarks in ``bench/`` share, one job a module.

* ``stats``: medians, percentiles, per-round ratios of interleaved variants, ``interleave`` itself;
* ``client``: a raw-socket HTTP/1.1 keep-alive client for a Unix socket, cheap enough not to dominate
  what it measures (a whole round trip to a canned-reply server costs ~25 us here, the driver ~600 us);
* ``processes``: drivers (``mini_ipam.testing.DriverProcess``) and redis-servers started for a
  benchmark, and what ``/proc`` says of them;
* ``maps``: filling stores, and file-store state files with N live pools written at once;
* ``report``: the figures of a benchmark, printed and written to ``bench/results/<name>.json``.

Every benchmark is one script, ``python bench/<name>.py``; ``python bench/all.py`` runs them all.
"""

from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
