"""`python -m core reproduce TABLE`: one command per paper table; parses, calls the table, writes its JSON.

The tables, their data and their estimated costs: `python -m core reproduce list` (registry:
core/reproduce/registry.py; docs/reproduce.md).
"""

from __future__ import annotations

import argparse

from core.cli.common import add_device_argument

EPILOG = """examples:
  python -m core reproduce list
  python -m core reproduce p2-segmentation --data gtsegs_ijcv.mat --bases b32-bases --device cuda --out p2-seg.json
  python -m core reproduce p1-waterbirds --images waterbird_complete95_forest2water2 --device cuda
  python -m core reproduce toy-segmentation --out toy-seg.json
Each run writes a JSON (--out, default reproduce-TABLE.json) with our numbers next to the published ones and
everything that produced them. It never replaces a file it did not write."""

KIND = "clipscope-reproduce"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="reproduce a table of the papers (list: python -m core reproduce list)",
        description="Reproduce one table of the papers, next to the published numbers.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", help="a table name, or `list`")
    parser.add_argument("--model", action="append", default=None,
                        help="model spec (repeat for several; default: the paper's models for the table)")
    parser.add_argument("--images", help="the labelled evaluation images (ImageNet val, Waterbirds, world:N:SEED, ...)")
    parser.add_argument("--label-column", help="the label column of --images (world: shape; hf: label)")
    parser.add_argument("--means-from", help="images the means come from (default: the table's paper setting)")
    parser.add_argument("--data", help="segmentation data: gtsegs_ijcv.mat or world:N:SEED")
    parser.add_argument("--bases", help="bases with the neuron layers the table needs")
    parser.add_argument("--texts", help="text pool file (or `toy`)")
    parser.add_argument("--heads", help="head set L.H,... for a model the paper gives none for (Waterbirds)")
    parser.add_argument("--per-head", type=int, help="p1-textspan: texts per head (default the paper's 60; at most a "
                        "head's numerical rank, e.g. 8 on the toy models)")
    parser.add_argument("--task", action="append", default=None, help="adversarial: PRESENT:TARGET (repeat)")
    parser.add_argument("--generator", default="sd", help="adversarial: sd (default) or world (offline stand-in)")
    parser.add_argument("--llm", help="adversarial: a transformers text-generation model for the descriptions")
    parser.add_argument("--repeats", type=int, default=3, help="adversarial repeats (default 3, as the paper)")
    parser.add_argument("--limit", type=int, help="only the first N images (a quick look; the JSON says so)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--state-dir", help="resume/work folder (default: under $CLIPSCOPE_CACHE)")
    parser.add_argument("--out", help="JSON file to write (default reproduce-TABLE.json)")
    add_device_argument(parser)
    parser.set_defaults(func=run)


def _list() -> int:
    from core.reproduce.registry import TABLES

    for table in TABLES.values():
        print(f"{table.name:18s} paper {table.paper:4s} {table.title}")
        print(f"{'':18s} needs: {table.needs}")
        print(f"{'':18s} default models: {', '.join(table.default_models)}")
        print(f"{'':18s} cost (estimate): {table.gpu_hours}")
        print(f"{'':18s} smoke test: {table.smoke}\n")
    return 0


def _check_out(path_text: str):
    import json
    from pathlib import Path

    from core import guards
    from core.errors import OutputError

    path = guards.check_output_path(path_text, "--out file", folder=False)
    if Path(path).exists():
        try:
            ours = json.loads(Path(path).read_text(encoding="utf-8")).get("kind") == KIND
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise OutputError(f"{path} exists and was not written by `python -m core reproduce`; it is never "
                              "replaced: choose another --out")
    return Path(path)


def run(args) -> int:
    import json
    import os
    import platform
    import sys
    import time
    from datetime import datetime, timezone

    from core import guards
    from core.cli.common import count, device_of, positive
    from core.errors import ConfigError
    from core.reproduce.registry import TableOptions, table
    from core.writes import atomic_write_text

    if args.table == "list":
        return _list()
    chosen = table(args.table)
    count(args.batch_size, "batch_size", "--batch-size")
    count(args.limit, "gallery", "--limit")
    count(args.per_head, "texts", "--per-head")
    positive(args.repeats, "--repeats", maximum=10)
    if args.generator not in ("sd", "world"):
        raise ConfigError(f"--generator must be sd or world, got {args.generator!r}")
    models = tuple(guards.check_model_allowed(m) for m in args.model or ())
    out = _check_out(args.out or f"reproduce-{chosen.name}.json")
    device = device_of(args)
    options = TableOptions(models=models, images=args.images, label_column=args.label_column,
                           means_from=args.means_from, data=args.data, bases=args.bases, texts=args.texts,
                           heads=args.heads, limit=args.limit, device=str(device), batch_size=args.batch_size,
                           state_dir=args.state_dir, generator=args.generator, llm=args.llm,
                           tasks=tuple(args.task or ()), repeats=args.repeats,
                           extra={"per_head": args.per_head} if args.per_head else {})
    start, cpu = time.time(), time.process_time()
    result = chosen.run(options, log=lambda line: print(line, file=sys.stderr))
    record = {"kind": KIND, **result,
              "command": _command(args),
              "limited_to": args.limit, "device": str(device),
              "run": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
                      "platform": platform.platform(), "wall_s": round(time.time() - start, 1),
                      "cpu_s": round(time.process_time() - cpu, 1), "load_average": list(os.getloadavg())}}
    atomic_write_text(out, json.dumps(record, indent=2, default=str))
    _print(record)
    print(f"\nwritten: {out}")
    return 0


def _command(args) -> str:
    """The command line that reproduces this run, rebuilt from the parsed options."""
    import shlex

    parts = ["python", "-m", "core", "reproduce", args.table]
    for flag, value in (("--images", args.images), ("--label-column", args.label_column),
                        ("--means-from", args.means_from), ("--data", args.data), ("--bases", args.bases),
                        ("--texts", args.texts), ("--heads", args.heads), ("--per-head", args.per_head),
                        ("--limit", args.limit),
                        ("--device", args.device), ("--llm", args.llm), ("--out", args.out)):
        if value is not None:
            parts += [flag, str(value)]
    for model in args.model or ():
        parts += ["--model", model]
    for task in args.task or ():
        parts += ["--task", task]
    if args.table == "p2-adversarial":
        parts += ["--generator", args.generator, "--repeats", str(args.repeats)]
    if args.batch_size != 32:
        parts += ["--batch-size", str(args.batch_size)]
    return shlex.join(parts)


def _print(record: dict) -> None:
    """Each row on one line: its identifying fields, our numbers, the published ones."""
    print(f"{record['table']} (paper {record['paper']}): {record['title']}")
    for row in record.get("rows", []):
        shown = []
        for key, value in row.items():
            if key in ("description", "spread", "class_specificity", "heads", "variance_explained", "successes",
                       "valid_images"):
                continue
            if isinstance(value, float):
                shown.append(f"{key} {value:.2f}")
            elif isinstance(value, list):
                shown.append(f"{key} {'; '.join(map(str, value))[:160]}")
            elif value is not None:
                shown.append(f"{key} {value}")
        spec = row.get("class_specificity")
        if isinstance(spec, dict) and "share_target_above_others" in spec:
            shown.append(f"class specificity {100 * spec['share_target_above_others']:.1f}%")
        print("  " + ", ".join(shown))
    if record.get("accuracy"):
        for row in record["accuracy"]:
            print(f"  m {row['m']}: accuracy {row['accuracy']:.2f}" + (f" (published {row['published']})"
                                                                       if row["published"] is not None else ""))
    if record.get("notes"):
        print(f"notes: {record['notes']}")
