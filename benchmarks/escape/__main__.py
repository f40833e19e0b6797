"""The escape study's command line (`python -m benchmarks.escape run|report`, see the package's docstring)."""
from __future__ import annotations

import argparse

import benchmarks.escape as study
from benchmarks.escape.harness import SETS, WORK, cmd_run
from benchmarks.escape.report import cmd_report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.escape", description=study.__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the missing runs of a set (or one --spec)")
    group = r.add_mutually_exclusive_group(required=True)
    group.add_argument("--set", help=f"comma-separated set names, run in that order: {', '.join(SETS)}")
    group.add_argument("--spec", help="JSON changes to the defaults, e.g. '{\"seed\": 3}'")
    r.add_argument("--shard", default="0/1", help="i/n: run every n-th spec starting at i (parallel shards)")
    r.add_argument("--work", default=str(WORK))
    rep = sub.add_parser("report", help="fold the finished runs into results/escape.json and print the tables")
    rep.add_argument("--work", default=str(WORK))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "run":
        cmd_run(args)
    else:
        cmd_report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
