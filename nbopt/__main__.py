"""Command line (``nbopt`` or ``python -m nbopt``).

  nbopt optimize MODEL --eval DATA [--calib DATA] [--metric M] [--recipes SPEC] [--backends LIST]
                 [--max-drop X] [--store DIR] [--report FILE] [--export PATH]
  nbopt report STORE [--out FILE]
  nbopt demo     runs the default sweep on the built-in digits demo

Exit 0 on success, 2 on a usage error (one line, no traceback), 3 when --max-drop is given and no
optimized candidate fits it. The implementation of optimize and report is in ``nbopt.cli``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def demo(args: argparse.Namespace) -> int:
    from . import optimize
    from .demo import digits_arrays, train_digits_cnn

    t0 = time.perf_counter()
    data = digits_arrays(seed=0)
    xtr, ytr, xval, yval = data
    print(f"Training a small CNN on scikit-learn's digits ({len(xtr)} train / {len(xval)} val images)...")
    model = train_digits_cnn(epochs=args.epochs, data=data)
    # train=: the default sweep's training recipes (qat, distill) fine-tune on the same split; val never.
    # --search auto climbs to the budget instead and stops at the first fit (on this CNN: per-tensor int8)
    study = optimize(model, calib=(xtr, ytr), eval=(xval, yval), train=(xtr, ytr), metric="accuracy",
                     store=args.store, max_accuracy_drop=args.max_drop, search=args.search)
    from .cli import print_table

    print_table(study.results, metric=study.metric.name)  # notes cut to the terminal's width
    best = study.best()
    print(f"\nBest within a {args.max_drop} accuracy drop: {best.name if best else 'none'}")
    report = study.to_html(Path(args.report))
    print(f"Report: {report.resolve()}  ({time.perf_counter() - t0:.1f} s in all)")
    return 0 if all(c.row["status"] != "failed" for c in study.candidates) or args.allow_failures else 1


def main(argv: list[str] | None = None) -> int:
    from . import cli

    parser = argparse.ArgumentParser(prog="nbopt", description="Make a model fit on a phone: quantize, prune, "
                                     "measure on the real runtimes, pick from the results.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli.add_optimize_parser(sub)
    cli.add_report_parser(sub)
    p = sub.add_parser("demo", help="train a digits CNN, run the default sweep, write an HTML report")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the demo CNN (default 8)")
    p.add_argument("--search", default="grid", choices=("grid", "auto"),
                   help="grid (default): the whole default sweep; auto: climb the accuracy ladder to --max-drop "
                        "and stop at the first candidate within it")
    p.add_argument("--store", default=".nbopt", help="folder where results are kept (default .nbopt)")
    p.add_argument("--report", default="nbopt-report.html", help="where to write the HTML report")
    p.add_argument("--max-drop", type=float, default=0.01, help="accuracy budget for the best pick (default 0.01)")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even if a candidate failed")
    p.set_defaults(run=demo)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args)
    return cli.dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
