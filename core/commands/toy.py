"""`python -m core toy ...`: the generated world and the toy CLIP trained on it.

    python -m core toy scenes --n 100 --seed 0 --out scenes/ [--size 64] [--split heldout] [--overwrite]

Each subcommand is added by one `_register_<name>(toy_subparsers)` function listed in `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse


def _run_scenes(args: argparse.Namespace) -> int:
    from core.world import write_scenes

    out = write_scenes(args.out, args.n, args.seed, split=args.split, image_size=args.size, overwrite=args.overwrite)
    print(f"wrote {args.n} {args.split} scenes ({args.size}x{args.size}) to {out}: images/, masks/, labels.csv")
    return 0


def _register_scenes(toy_subparsers) -> None:
    parser = toy_subparsers.add_parser(
        "scenes", help="write generated scenes: images, instance masks and labels.csv",
        description="Write N generated scenes as images/NNNNNN.png, masks/NNNNNN.png and labels.csv.")
    parser.add_argument("--n", type=int, required=True, help="number of scenes")
    parser.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, >= 32 (default 64)")
    # Not argparse `choices`: the engine names the valid splits in its own error.
    parser.add_argument("--split", default="heldout", help="heldout (default) or train")
    parser.add_argument("--overwrite", action="store_true", help="replace scenes already written in --out")
    parser.set_defaults(func=_run_scenes)


SUBCOMMANDS = (_register_scenes,)


def register(subparsers) -> None:
    parser = subparsers.add_parser("toy", help="the generated world and its toy CLIP",
                                   description="The generated world and the toy CLIP trained on it.")
    toy_subparsers = parser.add_subparsers(dest="toy_command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(toy_subparsers)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
