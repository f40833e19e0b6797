"""The convergence study's command line (`python -m benchmarks.convergence probes|curve|escape|report`, see the
package's docstring): one subcommand per kind of run, each with the --out work folder its runs are saved under."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import benchmarks.convergence as study
from benchmarks.common import RESULTS_DIR
from benchmarks.convergence.curves import cmd_curve, cmd_steptime
from benchmarks.convergence.escape_probes import ESCAPE_SETS, cmd_escape
from benchmarks.convergence.probes import PROBE_SETS, cmd_probes
from benchmarks.convergence.report import cmd_report

DEFAULT_WORK = Path("savedmodel") / "convergence"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=study.__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("probes", help="memorisation probes")
    pr.add_argument("--set", choices=sorted(PROBE_SETS), help="a named list of probes")
    pr.add_argument("--spec", default="{}", help="one probe: JSON overrides of PROBE_DEFAULTS")
    pr.add_argument("--force", action="store_true", help="rerun probes that are done already")
    cu = sub.add_parser("curve", help="one learning curve (resumable: rerun the same command to continue)")
    cu.add_argument("--spec", default="{}", help="JSON overrides of CURVE_DEFAULTS")
    cu.add_argument("--label", default=None, help="folder name under <out>/curves (default: from the settings)")
    cu.add_argument("--resume", action="store_true", help="continue the run saved under this label")
    es = sub.add_parser("escape", help="early-phase probes of the rotation study's recipe on the full training set")
    es.add_argument("--set", choices=sorted(ESCAPE_SETS), help="a named list of escape probes")
    es.add_argument("--spec", default="{}", help="one probe: JSON overrides of ESCAPE_DEFAULTS")
    es.add_argument("--force", action="store_true", help="rerun probes that are done already")
    st = sub.add_parser("steptime", help="seconds per optimiser step of a curve's recipe (run it alone)")
    st.add_argument("--spec", default="{}", help="JSON overrides of CURVE_DEFAULTS (the network and batch)")
    rp = sub.add_parser("report", help="write results/convergence.md from the finished runs")
    rp.add_argument("--findings", default=str(RESULTS_DIR / "convergence_findings.md"),
                    help="a markdown file of conclusions placed at the top of the report")
    for s in (pr, cu, es, st, rp):
        s.add_argument("--out", default=str(DEFAULT_WORK))
        s.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    {"probes": cmd_probes, "curve": cmd_curve, "escape": cmd_escape, "steptime": cmd_steptime,
     "report": cmd_report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
