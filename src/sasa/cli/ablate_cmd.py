"""``sasa ablate TABLE``: the paper's ablation rows, their cost beside the paper's, optionally trained."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sasa.ablation import table_rows
from sasa.ablation.profile import profile_row
from sasa.ablation.study import run_study
from sasa.cli.options import positive_int
from sasa.errors import UserError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ablate", help="the paper's ablations (Tables 3-7): params/FLOPs vs the paper, optionally trained",
        description="Rows of the paper's Tables 3-7 with parameters and FLOPs at 224 (ResNet-50 layout, 1000 "
                    "classes) beside the paper's. With --train, every row is trained --seeds times with the data's "
                    "recipe (ResNet---depth layout) and its mean ± std val top-1 is added; the study resumes row by row.",
    )
    parser.add_argument("table", choices=["3", "4", "5", "6", "7", "all"], help="which table")
    parser.add_argument("--rows", nargs="+", metavar="LABEL",
                        help="only these rows of one table (labels as in --json; '' is Table 3's all-conv row): "
                             "e.g. to train rows in parallel processes sharing one --out")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    parser.add_argument("--train", metavar="DATA", nargs="?", const="digits",
                        help="train every row on DATA ('digits', the default, or an ImageFolder root)")
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds per row with --train (default 3)")
    parser.add_argument("--depth", type=int, choices=(26, 38, 50), default=26,
                        help="ResNet layout trained with --train (default 26; the costs are always the paper's 50)")
    parser.add_argument("--epochs", type=positive_int, help="override the recipe's epochs with --train")
    parser.add_argument("--device", default=None, help="training device (default: cuda if available, else cpu)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="study folder (default runs/ablation)")
    parser.set_defaults(func=run_ablate)


def run_ablate(args: argparse.Namespace) -> int:
    rows = table_rows(args.table)
    if args.rows is not None:
        rows = select_rows(rows, args.rows, table=args.table)
    if args.train:
        overrides = {key: value for key, value in (("epochs", args.epochs), ("device", args.device)) if value is not None}
        records = run_study(rows, out=args.out, data=args.train, seeds=args.seeds, depth=args.depth,
                            overrides=overrides, log=print if not args.json else lambda line: None)
    else:
        records = [profile_row(row) for row in rows]
    if args.json:
        print(json.dumps(records))
        return 0
    trained = "top1_mean" in records[0]
    header = f"{'table':>5} {'row':<16} {'params (M)':>10} {'paper':>6} {'GFLOPs':>7} {'paper':>6} {'paper top-1':>11}"
    print(header + (f" {'ours top-1 (mean ± std)':>24}" if trained else ""))
    for r in records:
        paper_params = "-" if r["paper_params"] is None else f"{r['paper_params'] / 1e6:.1f}"
        line = (f"{r['table']:>5} {r['row'] or '(none)':<16} {r['params'] / 1e6:>10.2f} {paper_params:>6} "
                f"{r['flops'] / 1e9:>7.2f} {r['paper_flops'] / 1e9:>6.1f} {r['paper_top1']:>11.1f}")
        if trained:
            line += f" {r['top1_mean']:>15.2f} ± {r['top1_std']:.2f} ({r['seeds']})"
        print(line)
    if trained:
        print(f"wrote {args.out / 'ablation.json'}, ablation.csv, ablation.png")
    return 0


def select_rows(rows: list, labels: list[str], *, table: str) -> list:
    """The rows named by ``labels``, in the table's order; an unknown label is a user error naming the valid ones."""
    if table == "all":
        raise UserError("--rows needs one table (3-7): row labels repeat across tables")
    valid = [row.row for row in rows]
    unknown = [label for label in labels if label not in valid]
    if unknown:
        raise UserError(f"no row {unknown[0]!r} in table {table}; rows: {', '.join(repr(v) for v in valid)}")
    return [row for row in rows if row.row in labels]
