"""Command line: ``python -m pyro_snf demo [--out DIR] [--quick] [--seed N]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyro_snf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="plain flow vs SNF on the double well: table + PNG figures")
    demo.add_argument("--out", default="demo_out", help="folder for the figures (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="shorter training and evaluation (~30 s)")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        import torch

        from pyro_snf.examples.demo import run_demo

        torch.set_num_threads(1)
        run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
