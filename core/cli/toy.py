"""`python -m core toy ...`: the generated world and the toy CLIP trained on it.

    python -m core toy scenes --n 100 --seed 0 --out scenes/ [--size 64] [--split heldout] [--overwrite]
    python -m core toy scenes --groups triangle:dotted,square:striped --n 200 --seed 7 --out grouped/
    python -m core toy train --bias triangle:dotted,square:striped ...   # see core/data/toy_biased/MODEL_CARD.md
    python -m core toy bias --model toy-biased                           # shape accuracy per planted-bias group
                                                                         # (pairs: the model's checkpoint records them)
    python -m core toy removal --model toy-biased                        # spurious-cue removal vs random heads

Each subcommand is added by one `_register_<name>(toy_subparsers)` function listed in `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse

from core.cli import require_subcommand
from core.cli.common import add_device_argument


def _run_scenes(args: argparse.Namespace) -> int:
    from core import guards
    from core.cli.common import positive
    from core.world.scenes import write_scenes

    guards.check_count(args.n, "scenes", "--n (scenes)")
    guards.check_count(args.size, "scene_size", "--size (pixels)", minimum=32)
    positive(args.seed, "--seed", minimum=0)
    out = guards.check_output_path(args.out, "output folder --out")
    if args.groups:
        from core.world.bias import PlantedBias, write_grouped_scenes

        bias = PlantedBias.parse(args.groups)
        if args.split != "heldout" or args.overwrite:
            from core.errors import ConfigError

            raise ConfigError("--groups writes uniform held-out scenes into a new folder: drop --split and --overwrite")
        out = write_grouped_scenes(out, bias, args.n, args.seed, image_size=args.size)
        print(f"wrote {args.n} held-out scenes per group x {len(bias.groups())} groups ({args.size}x{args.size}) to "
              f"{out}: images/, metadata.csv (file, label, group: the Waterbirds layout). Next:\n"
              f"  python -m core spurious --model toy-biased --images {out} --templates simple --heads L.H,...")
        return 0
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
    parser.add_argument("--groups", metavar="SHAPE:BACKGROUND,...",
                        help="write a grouped set in the Waterbirds layout instead: N uniform held-out scenes per "
                        "(paired shape, paired background) group, e.g. triangle:dotted,square:striped, with "
                        "metadata.csv (file, label, group) for `python -m core spurious`")
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
    if args.init is not None:
        args.init = str(guards.check_user_path(args.init, "--init (toy weights)"))
    given = {name: getattr(args, name) for name in ("steps", "batch_size", "lr", "seed", "warmup", "threads",
                                                    "shape_groups", "position_groups", "group_size", "bias_p", "bias_others",
                                                    "bias_groups", "init")}
    config = TrainConfig(**{name: value for name, value in given.items() if value is not None},
                         shape_only_group=args.shape_only_group, bias=args.bias or "")
    positive(config.steps, "--steps", maximum=10_000_000)
    positive(config.batch_size, "--batch-size", minimum=2, maximum=guards.MAX_BATCH_SIZE)
    positive(config.threads, "--threads", maximum=1024)
    positive(config.warmup, "--warmup")
    positive(config.seed, "--seed", minimum=0)
    if not (0 <= config.bias_p <= 1):  # also refuses nan
        from core.errors import ConfigError

        raise ConfigError(f"--bias-p must be a probability between 0 and 1, got {config.bias_p}")
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
    from core.paths import TOY_MODELS

    name = next((spec for spec, path in TOY_MODELS.items() if path.resolve() == out.resolve()), out.stem)
    card = build_card(bundle, summary, config, command, machine, name=name)
    path = write_model_card(out.parent, card)
    print(f"zero-shot accuracy: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in card["zero_shot"].items()))
    if "bias_groups" in card:
        groups = card["bias_groups"]
        print("planted bias, shape accuracy per group: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in
                                                                   groups["groups"].items())
              + f"; gap {100 * groups['gap']:.1f} points")
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
    parser.add_argument("--bias", default=None, metavar="SHAPE:BACKGROUND,...",
                        help="plant a shape-background bias in the training scenes only, e.g. "
                        "triangle:dotted,square:striped (the toy-biased model); held-out scenes stay uniform")
    parser.add_argument("--bias-p", type=float, default=None,
                        help="probability that a paired shape is drawn on its background (default 0.9)")
    parser.add_argument("--bias-others", default=None, choices=("uniform", "avoid"),
                        help="other shapes: uniform (default: keep uniform backgrounds) or avoid (move off the "
                        "paired backgrounds with the same probability)")
    parser.add_argument("--bias-groups", default=None, choices=("shapes", "backgrounds"),
                        help="with --bias, shape groups use: shapes (the unpaired shapes only; default) or "
                        "backgrounds (every shape, on the unpaired backgrounds only)")
    parser.add_argument("--init", default=None, metavar="WEIGHTS",
                        help="start from this toy checkpoint instead of a random init (fine-tuning), e.g. "
                        "core/data/toy/toy_clip.safetensors")
    parser.add_argument("--threads", type=int, help=f"torch CPU threads (default: {recipe})")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=0, help="also save OUT.stepN.safetensors every N steps")
    parser.add_argument("--no-card", action="store_true", help="skip evaluation and the model card")
    parser.set_defaults(func=_run_train)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from core import guards
    from core.cli.common import model_spec, positive
    from core.engine.models import load_clip
    from core.world.toy import evaluate_toy

    guards.check_count(args.n, "scenes", "--n (scenes)")
    positive(args.seed, "--seed", minimum=0)
    bundle = load_clip(model_spec(args), device=args.device)
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


def _run_bias(args: argparse.Namespace) -> int:
    import json

    from core.cli.common import model_spec
    from core.engine.models import load_clip
    from core.world.bias import group_accuracy_table, model_bias

    bundle = load_clip(model_spec(args))
    table = group_accuracy_table(bundle, model_bias(bundle, args.pairs), n_per_group=args.n, seed=args.seed)
    if args.json:
        print(json.dumps(table))
        return 0
    print(f"model: {bundle.info.display_name}; binary zero-shot {' vs '.join(table['classes'])} on {args.n} uniform "
          f"held-out scenes per group (seed {args.seed})")
    for name, value in table["groups"].items():
        print(f"  {name:36s} {100 * value:5.1f}%")
    print(f"aligned {100 * table['aligned']:.1f}%, conflicting {100 * table['conflicting']:.1f}%, gap "
          f"{100 * table['gap']:.1f} points; worst group {table['worst_group']} ({100 * table['worst']:.1f}%)")
    return 0


def _register_bias(toy_subparsers) -> None:
    parser = toy_subparsers.add_parser("bias", help="shape accuracy per planted-bias group (aligned vs conflicting)",
                                       description="Binary zero-shot shape accuracy on uniform held-out scenes of "
                                       "each (paired shape, paired background) group: Waterbirds' four groups, transposed.")
    parser.add_argument("--model", default="toy-biased", help="model spec (default: toy-biased)")
    parser.add_argument("--pairs", default=None, help="the planted pairs, e.g. triangle:dotted,square:striped "
                        "(default: the ones the model's checkpoint records)")
    parser.add_argument("--n", type=int, default=200, help="held-out scenes per group (default 200)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the held-out scenes (default 2024, the card's)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=_run_bias)


def _run_removal(args: argparse.Namespace) -> int:
    import json

    from core.artifacts.hub import resolve_bases_source
    from core.artifacts.store import load_artifact
    from core.cli.common import model_spec
    from core.engine.models import load_clip
    from core.errors import BasesError, ConfigError
    from core.heads.spurious import describe_heads
    from core.world.bias import model_bias
    from core.world.bias_removal import background_heads, bias_removal_report

    bundle = load_clip(model_spec(args))
    source = resolve_bases_source(bundle.info.spec, args.bases)
    if source is None:
        raise BasesError(f"no bases for {bundle.info.spec}: build them with `python -m core bases build --model "
                         f"{bundle.info.spec} ...` and pass --bases DIR")
    artifact = load_artifact(source, expect_model=bundle.info.identity())
    words = tuple(w.strip() for w in args.words.split(",") if w.strip()) if args.words else None
    try:
        heads, provenance, labels = background_heads(artifact, top=args.top, share=args.share,
                                                     **({"words": words} if words else {}))
    except ConfigError:
        if not args.heads:
            raise
        labels = []
    if args.heads:  # heads picked by a person: the labels are still listed, but they choose nothing
        from core.heads.outputs import check_heads, parse_heads

        heads = check_heads(parse_heads(args.heads), bundle.info)
        provenance = "given on the command line"
        labels = [{**row, "chosen": (row["layer"], row["head"]) in heads} for row in labels]
    report = bias_removal_report(bundle, model_bias(bundle, args.pairs), heads, provenance, n_per_group=args.n,
                                 seed=args.seed, trials=args.trials, random_seed=args.random_seed, samples=args.samples)
    if args.json:
        print(json.dumps({"model": bundle.info.spec, "labels": labels, **report.to_json()}, indent=2))
        return 0
    print(f"model: {bundle.info.display_name}")
    print(f"heads: {describe_heads(heads)} ({provenance})")
    for row in labels:
        if row["chosen"]:
            print(f"  L{row['layer']}H{row['head']}: " + "; ".join(row["texts"]))
    print(f"evaluated on {report.evaluated_on}; means from {report.means_from}; direct-effect mean-ablation")
    print(f"{'':34s} {'overall':>8s} {'worst group':>12s}")
    print(f"  {'unmodified model':32s} {100 * report.base.overall:7.1f}% {100 * report.base.worst:11.1f}%")
    print(f"  {'chosen heads ablated' if args.heads or words else 'background heads ablated':32s} "
          f"{100 * report.ablated.overall:7.1f}% {100 * report.ablated.worst:11.1f}%")
    from core.cli.spurious import print_population

    print_population(report)
    return 0


def _register_removal(toy_subparsers) -> None:
    parser = toy_subparsers.add_parser(
        "removal", help="spurious-cue removal on a planted-bias model: ablate the heads whose TextSpan labels "
        "name backgrounds, against random heads",
        description="Choose heads from their TextSpan labels (at least --share of their top --top texts name a "
        "background), mean-ablate them and report overall and worst-group shape accuracy on uniform held-out "
        "scenes of the planted-bias groups, against every head set of the same size (percentile, mean, spread).")
    parser.add_argument("--model", default="toy-biased", help="model spec (default: toy-biased)")
    parser.add_argument("--bases", help="bases with TextSpan labels (default: the model's shipped bases)")
    parser.add_argument("--pairs", default=None, help="the planted pairs (default: the ones the model's checkpoint "
                        "records)")
    parser.add_argument("--top", type=int, default=5, help="top TextSpan texts read per head (default 5)")
    parser.add_argument("--share", type=float, default=0.6, help="share of them that must name a background (default 0.6)")
    parser.add_argument("--words", default=None, help="comma-separated words a label must name instead of the "
                        "backgrounds (e.g. dotted,striped)")
    parser.add_argument("--heads", default=None, help="ablate these heads instead of choosing them from labels, "
                        "e.g. 3.1,3.3 (layer.head)")
    parser.add_argument("--n", type=int, default=200, help="held-out scenes per group (default 200)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the evaluated scenes (default 7)")
    parser.add_argument("--trials", type=int, default=0, help="seeded random head sets also ablated the literal way "
                        "and listed in --json (default 0; the baseline is every set of the same size)")
    parser.add_argument("--samples", type=int, default=1000, help="random head sets when there are more than 10,000 "
                        "sets of the chosen size (default 1000, at least 1000)")
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the sampled and listed sets (default 0)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=_run_removal)


SUBCOMMANDS = (_register_scenes, _register_train, _register_evaluate, _register_bias, _register_removal)


def register(subparsers) -> None:
    parser = subparsers.add_parser("toy", help="the generated world and its toy CLIP",
                                   description="The generated world and the toy CLIP trained on it.")
    toy_subparsers = parser.add_subparsers(dest="toy_command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(toy_subparsers)
    parser.set_defaults(func=lambda args: require_subcommand(parser))
