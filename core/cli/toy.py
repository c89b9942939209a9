"""`python -m core toy ...`: the generated world and the toy CLIP trained on it.

    python -m core toy scenes --n 100 --seed 0 --out scenes/ [--size 64] [--split heldout] [--overwrite]

Each subcommand is added by one `_register_<name>(toy_subparsers)` function listed in `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse

from core.cli.common import add_device_argument


def _run_scenes(args: argparse.Namespace) -> int:
    from core import guards
    from core.cli.common import positive
    from core.world.scenes import write_scenes

    guards.check_count(args.n, "scenes", "--n (scenes)")
    guards.check_count(args.size, "scene_size", "--size (pixels)", minimum=32)
    positive(args.seed, "--seed", minimum=0)
    out = guards.check_output_path(args.out, "output folder --out")
    out = write_scenes(out, args.n, args.seed, split=args.split, image_size=args.size, overwrite=args.overwrite)
    print(f"wrote {args.n} {args.split} scenes ({args.size}x{args.size}) to {out}: images/, masks/, labels.csv")
    return 0


def _register_scenes(toy_subparsers) -> None:
    parser = toy_subparsers.add_parser(
        "scenes", help="write generated scenes: images, instance masks and labels.csv",
        description="Write N generated scenes as images/NNNNNN.png, masks/NNNNNN.png and labels.csv.")
    parser.add_argument("--n", type=int, required=True, help="number of scenes")
    parser.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, 32..1024 (default 64)")
    # Not argparse `choices`: the engine names the valid splits in its own error.
    parser.add_argument("--split", default="heldout", help="heldout (default) or train")
    parser.add_argument("--overwrite", action="store_true", help="replace scenes an earlier `toy scenes` wrote in "
                        "--out (listed in its .clipscope-scenes.json); other files are never replaced or deleted")
    parser.set_defaults(func=_run_scenes)


def _run_train(args: argparse.Namespace) -> int:
    import os
    import platform
    import shlex
    import sys

    from core import guards
    from core.cli.common import positive
    from core.engine.models import load_clip
    from core.paths import TOY_ARCH
    from core.world.toy import TrainConfig, build_card, check_training_outputs, train_toy, write_model_card

    out = guards.check_output_path(args.out, "weights file --out", folder=False)
    check_training_outputs(out, overwrite=args.overwrite, card=not args.no_card)
    given = {name: getattr(args, name) for name in ("steps", "batch_size", "lr", "seed", "warmup", "threads",
                                                    "shape_groups", "position_groups", "group_size")}
    config = TrainConfig(**{name: value for name, value in given.items() if value is not None},
                         shape_only_group=args.shape_only_group)
    positive(config.steps, "--steps", maximum=10_000_000)
    positive(config.batch_size, "--batch-size", minimum=2, maximum=guards.MAX_BATCH_SIZE)
    positive(config.threads, "--threads", maximum=1024)
    positive(config.warmup, "--warmup")
    positive(config.seed, "--seed", minimum=0)
    if not (0 < config.lr < 1):  # also refuses nan and inf
        from core.errors import ConfigError

        raise ConfigError(f"--lr must be a number between 0 and 1, got {config.lr}")
    positive(args.log_every, "--log-every")
    positive(args.save_every, "--save-every", minimum=0)
    if config.warmup > config.steps:
        from dataclasses import replace

        config = replace(config, warmup=config.steps)
    summary = train_toy(out, config, log=lambda line: print(line, flush=True), log_every=args.log_every,
                        save_every=args.save_every)
    print(f"trained in {summary['wall_seconds'] / 60:.1f} min; loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}")
    if args.no_card:
        return 0
    bundle = load_clip(f"{TOY_ARCH}/{out}")
    command = " ".join(["python -m core toy train", *(shlex.quote(a) for a in sys.argv[3:])])
    machine = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch threads {config.threads}"
    card = build_card(bundle, summary, config, command, machine)
    path = write_model_card(out.parent, card)
    print(f"zero-shot accuracy: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in card["zero_shot"].items()))
    print(f"model card: {path}")
    return 0


def _register_train(toy_subparsers) -> None:
    # Defaults (None) are the shipped recipe, core.world.toy.TrainConfig, read at run time: importing it here
    # would load torch and open_clip for every command's --help.
    from core.paths import TOY_WEIGHTS

    recipe = "the shipped recipe, core.world.toy.TrainConfig"

    parser = toy_subparsers.add_parser("train", help="retrain the toy CLIP from scratch and write its model card",
                                       description="Train the toy CLIP on the generated world (CPU), then evaluate it "
                                       "and write MODEL_CARD.md and card.json next to the weights.")
    parser.add_argument("--out", default=str(TOY_WEIGHTS), help=f"weights file (default: {TOY_WEIGHTS})")
    parser.add_argument("--overwrite", action="store_true", help="replace a weights file (and its model card) that "
                        "an earlier `toy train` wrote; other files are never replaced")
    parser.add_argument("--steps", type=int, help=f"training steps (default: {recipe})")
    parser.add_argument("--batch-size", type=int, help=f"scenes per batch (default: {recipe})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default: {recipe})")
    parser.add_argument("--warmup", type=int, help=f"warm-up steps (default: {recipe})")
    parser.add_argument("--seed", type=int, help=f"random seed (default: {recipe})")
    parser.add_argument("--shape-groups", type=int,
                        help=f"groups per batch of scenes that differ only in shape (0: none; default: {recipe})")
    parser.add_argument("--position-groups", type=int,
                        help=f"groups per batch of single objects that differ only in position (default: {recipe})")
    parser.add_argument("--group-size", type=int, help=f"scenes per group, 2..5 (default: {recipe})")
    parser.add_argument("--no-shape-only-group", dest="shape_only_group", action="store_false",
                        help="leave out the group of five scenes captioned by their shape alone")
    parser.add_argument("--threads", type=int, help=f"torch CPU threads (default: {recipe})")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=0, help="also save OUT.stepN.safetensors every N steps")
    parser.add_argument("--no-card", action="store_true", help="skip evaluation and the model card")
    parser.set_defaults(func=_run_train)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from core import guards
    from core.cli.common import device_of, positive
    from core.engine.models import load_clip
    from core.world.toy import evaluate_toy

    guards.check_count(args.n, "scenes", "--n (scenes)")
    positive(args.seed, "--seed", minimum=0)
    bundle = load_clip(guards.check_model_allowed(args.model), device=device_of(args))
    accuracy = evaluate_toy(bundle, n=args.n, seed=args.seed)
    if args.json:
        print(json.dumps({**accuracy, "device": str(bundle.device)}))
    else:
        print(f"model: {bundle.info.display_name} on {bundle.device}; {args.n} fresh held-out scenes (seed {args.seed})")
        for name, value in accuracy.items():
            print(f"  {name:10s} {100 * value:5.1f}%")
    return 0


def _register_evaluate(toy_subparsers) -> None:
    parser = toy_subparsers.add_parser("evaluate", help="zero-shot accuracy per attribute on fresh held-out scenes")
    parser.add_argument("--model", default="toy", help="model spec (default: toy)")
    add_device_argument(parser)
    parser.add_argument("--n", type=int, default=1000, help="number of held-out scenes (default 1000)")
    parser.add_argument("--seed", type=int, default=31337, help="seed of the held-out scenes (default 31337)")
    parser.add_argument("--json", action="store_true", help='print {"shape": .., "colour": .., "position": .., "background": .., "count": .., "device": ..}')
    parser.set_defaults(func=_run_evaluate)


SUBCOMMANDS = (_register_scenes, _register_train, _register_evaluate)


def register(subparsers) -> None:
    parser = subparsers.add_parser("toy", help="the generated world and its toy CLIP",
                                   description="The generated world and the toy CLIP trained on it.")
    toy_subparsers = parser.add_subparsers(dest="toy_command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(toy_subparsers)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
