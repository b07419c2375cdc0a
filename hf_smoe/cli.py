"""The `smoe` command line. Each subcommand is a thin shell over a library function."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoe", description="Sparse Mixture-of-Experts reward models: train, read, steer and personalize.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="train every preset on a small offline example and compare them",
                               description="Interim demo: a tiny random backbone on generated synthetic pairs "
                                           "(mechanics only, not a benchmark).")
    demo.add_argument("--output-dir", default="outputs/demo", help="where the sparse checkpoint is written")
    demo.add_argument("--num-pairs", type=int, default=800, help="number of generated preference pairs")
    demo.add_argument("--epochs", type=int, default=30, help="training epochs over the cached features")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(output_dir=args.output_dir, num_pairs=args.num_pairs, epochs=args.epochs, seed=args.seed)
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"smoe {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
