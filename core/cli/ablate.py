"""`python -m core ablate`: zero-shot accuracy with components mean-ablated (the paper's table)."""

from __future__ import annotations

from core import engine
from core.cli.common import add_convention_argument, add_model_argument, model_line, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="mean-ablate MLPs, CLS->CLS paths, attention layers or heads; print zero-shot accuracies",
        description="Replace components by their mean over a reference image set (--means-from, default: the "
        "evaluation folder itself, as the paper did) and print zero-shot accuracy on a labelled folder: "
        "ImageFolder layout (one sub-folder per class), or a labels CSV with --label-column.",
    )
    add_model_argument(parser)
    parser.add_argument("--images", required=True, help="labelled image folder (ImageFolder layout, or with labels.csv), "
                        "or world:N[:SEED] / hf:ORG/NAME@REVISION:SPLIT with --label-column")
    parser.add_argument("--label-column", help="read labels from DIR/labels.csv, this column (e.g. shape)")
    parser.add_argument("--means-from", help="images to compute the means from, as --images (default: --images)")
    parser.add_argument("--templates", default="auto",
                        help="openai (the 80 ImageNet templates), simple ('a photo of a {}.'), toy (the world's "
                        "templates for --label-column), a file with one template per line containing {}, or auto "
                        "(toy for the toy model with a toy attribute column, else openai)")
    parser.add_argument("--heads", help="also ablate these heads together, e.g. 3.1,3.2 (layer.head)")
    parser.add_argument("--batch-size", type=int, default=32)
    add_convention_argument(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def _parse_heads(text: str | None) -> tuple[tuple[int, int], ...]:
    from core.errors import ConfigError

    if not text:
        return ()
    try:
        return tuple((int(l), int(h)) for l, h in (item.split(".") for item in text.split(",")))
    except ValueError as err:
        raise ConfigError(f"--heads must look like 10.3,11.0 (layer.head), got {text!r}") from err


def run(args) -> int:
    from pathlib import Path

    from core.engine.ablation import Ablation, ablation_accuracies, component_means, standard_ablations
    from core.cli.common import (check_convention, check_templates, classifier_for, count, labelled_source,
                                 model_spec, parse_images)

    count(args.batch_size, "batch_size", "--batch-size")
    check_convention(args.convention)
    check_templates(args.templates)
    heads = _parse_heads(args.heads)
    model_spec(args)
    folder = Path(args.images)
    labelled = labelled_source(args.images, args.label_column, "--images")
    means_paths = labelled.paths
    if args.means_from is not None:
        means_paths = parse_images(args.means_from, "--means-from", generator_split="heldout")  # an ImageSet
    bundle = engine.load_clip(args.model, device=args.device)
    classifier, described = classifier_for(bundle, labelled.classnames, args.templates, args.label_column)
    source = f"{args.means_from or folder} ({len(means_paths)} images{'; the evaluation set itself' if not args.means_from else ''})"
    means = component_means(bundle, means_paths, description=source, convention=args.convention, batch_size=args.batch_size)
    ablations = standard_ablations(bundle.info.n_layers)
    if heads:
        from core.heads.outputs import check_heads

        heads = tuple(check_heads(heads, bundle.info))
        ablations.append(Ablation("heads " + args.heads, heads=heads))
    report = ablation_accuracies(bundle, labelled, classifier, means, ablations,
                                 classifier_description=described, batch_size=args.batch_size)
    if args.json:
        print_json({"model": report.model, "convention": report.convention, "means_from": report.means_from,
                    "evaluated_on": report.evaluated_on, "classifier": report.classifier,
                    "accuracy": dict(report.rows), "skipped": report.skipped}, device=bundle.device)
        return 0
    print(model_line(bundle))
    print(f"evaluated on: {report.evaluated_on}\nmeans from:   {report.means_from}\n"
          f"classifier:   {report.classifier}; convention: {report.convention} (direct-effect mean-ablation, "
          "final LayerNorm statistics frozen)")
    for name, accuracy in report.rows:
        print(f"  {name:32s} {100 * accuracy:6.2f}%")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable images, e.g. {report.skipped[0]}")
    return 0
