"""Run every benchmark, one after the other, then print one summary table of their figures.

    python bench/all.py                     # all twelve benchmarks (about 25 minutes on 2 cores)
    python bench/all.py startup durability  # only these
    python bench/all.py --summary           # only the table, from bench/results/*.json
    python bench/all.py --profile           # also bench/profile_floor.py (needs py-spy)

Each benchmark runs as its own process (``python bench/<name>.py``), so one failing does not stop the
others; the exit status is non-zero when one failed. Targets that do not hold are not failures: a
benchmark reports, it does not judge.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from support import BENCH, REPO, RESULTS

BENCHMARKS = (
    "framework_floor",
    "flat_allocation",
    "redis_round_trips",
    "durability",
    "end_to_end",
    "many_hosts",
    "memory_rss",
    "startup",
    "latency_vs_fill",
    "redis_cost",
    "scrape_cost",
    "fleet",
)


def run(name: str) -> bool:
    """Run one benchmark with its defaults; True when it exited 0."""
    print(f"\n=== python bench/{name}.py", flush=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(BENCH / f"{name}.py")], cwd=REPO, check=False)
    print(f"=== {name}: exit {result.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    return result.returncode == 0


def summary(names: list[str]) -> None:
    """One table of every figure in the results of ``names``."""
    print(f"\n{'figure':<74} {'value':>10} {'unit':<6} {'target':<9} verdict")
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            print(f"{name}: no results (run python bench/{name}.py)")
            continue
        result = json.loads(path.read_text())
        print(f"-- {result['command']}   ({result['started']}, {result['wall_seconds']} s)")
        for figure in result["figures"]:
            verdict = {True: "holds", False: "MISSED", None: ""}[figure["holds"]]
            value = figure["value"]
            text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
            print(f"{figure['name']:<74} {text:>10} {figure['unit']:<6} {figure['target']:<9} {verdict}")


def main() -> None:
    """Run the chosen benchmarks (all by default) and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(BENCHMARKS)}, profile_floor")
    parser.add_argument("--summary", action="store_true", help="only print the table from existing results")
    parser.add_argument("--profile", action="store_true", help="also run profile_floor.py (py-spy)")
    args = parser.parse_args()
    unknown = set(args.names) - {*BENCHMARKS, "profile_floor"}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    names = list(args.names) or list(BENCHMARKS)
    if args.profile and "profile_floor" not in names:
        names.append("profile_floor")
    failed = []
    if not args.summary:
        failed = [name for name in names if not run(name)]
    summary(names)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
