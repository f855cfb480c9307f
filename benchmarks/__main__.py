"""``python -m benchmarks --suite quick|full --out DIR``: the side-by-side benchmark suite.

Runs every method on every target (see :mod:`benchmarks.suite`) and writes the report (RESULTS.md),
``DIR/results.json`` and the figures ``DIR/*.png``. The report goes to ``benchmarks/RESULTS.md`` for
the full suite (the committed numbers) and to ``DIR/RESULTS.md`` for the quick one, unless
``--report`` says otherwise.

    python -m benchmarks --suite quick --out /tmp/bench          # smoke test, < 1 minute
    python -m benchmarks --suite full --out benchmarks/results   # the committed results, ~40 minutes
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from benchmarks.suite import run_suite

COMMITTED_REPORT = Path(__file__).resolve().parent / "RESULTS.md"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["quick", "full"], default="quick")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for the figures and results.json")
    parser.add_argument("--report", type=Path, default=None,
                        help="markdown report (default: benchmarks/RESULTS.md for the full suite, "
                             "OUT/RESULTS.md for the quick one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", default=None, metavar="TARGET",
                        help="run only these targets (e.g. double_well sonar)")
    args = parser.parse_args(argv)
    report = args.report or (COMMITTED_REPORT if args.suite == "full" else args.out / "RESULTS.md")
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv)
    return run_suite(args.suite, args.out, report, seed=args.seed, only=set(args.only) if args.only else None,
                     command=command.strip(), log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
