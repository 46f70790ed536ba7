"""Write the speed tables of bench_op.py and bench_models.py (their JSON) into README.md.

Each table goes between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` (NAME = op,
models), with the command and machine it came from; the rest of the README is left as it is.

    python benchmarks/update_readme.py [--results bench_results] [--readme README.md]
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def block(payload: dict, meta: dict) -> str:
    load = meta.get("load_average")
    load_s = f", load average {load[0]:.1f}" if load else ""
    return (f"`{payload['command']}` ({meta.get('cpu') or meta.get('device')}, torch {meta.get('torch')}{load_s})\n\n"
            f"{payload['markdown']}")


def replace(text: str, name: str, content: str) -> str:
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{content}\n{end}", text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench_results")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    op = json.loads((args.results / "bench_op.json").read_text())
    op["command"] = op["meta"]["command"]
    text = replace(text, "op", block(op, op["meta"]))
    models = json.loads((args.results / "bench_models.json").read_text())
    text = replace(text, "models", block(models, models["machine"]))
    tmp = args.readme.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(args.readme)
    print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
