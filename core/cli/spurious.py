"""`python -m core spurious`: mean-ablate a head set, report overall and worst-group accuracy."""

from __future__ import annotations

import argparse

from core.cli.common import add_convention_argument, add_model_argument, load_model, model_line, print_json

EXAMPLES = """examples:
  python -m core spurious --model ViT-B-16/laion2b_s34b_b88k --images waterbirds/ --split 2 \\
      --classnames landbird,waterbird --heads heads/b16_waterbirds.json --trials 5
  python -m core spurious --model toy --images grouped/ --heads 3.1,3.2 --templates simple
A head set file is {"heads": [[layer, head], ...], "provenance": "how they were chosen"}."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "spurious", help="spurious-cue removal: worst-group accuracy with a head set mean-ablated vs random heads",
        description="Zero-shot accuracy, overall and per group, on a grouped folder (Waterbirds layout: "
        "DIR/metadata.csv with file, label and group columns; Waterbirds' img_filename, y and place work too) "
        "for the unmodified model, with the chosen heads mean-ablated, and with every set of as many heads from the "
        "same layers mean-ablated (or 1,000+ sampled sets past 10,000): the population's mean, spread and the chosen "
        "set's percentile.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--images", required=True, help="grouped folder holding metadata.csv")
    parser.add_argument("--heads", required=True, help="a head set JSON file, or heads inline, e.g. 10.3,11.0")
    parser.add_argument("--trials", type=int, default=0, help="seeded random head sets also ablated the literal way "
                        "and listed in --json (default 0: the baseline is the population below)")
    parser.add_argument("--samples", type=int, default=1000, help="random head sets drawn when there are more than "
                        "10,000 sets of the chosen size (default 1000, at least 1000); otherwise every set is used")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled and listed head sets (default 0)")
    parser.add_argument("--random-layers", type=int, nargs="+",
                        help="layers random heads are drawn from (default: the first chosen head's layer to the last)")
    parser.add_argument("--means-from", help="folder of images to compute the means from (default: the evaluated "
                        "set itself, as the paper code; flagged in the output)")
    parser.add_argument("--classnames", help="class names for the label values in sorted order, e.g. "
                        "landbird,waterbird (default: the label values)")
    parser.add_argument("--split", help="keep only rows whose split column equals this (Waterbirds test: 2)")
    parser.add_argument("--templates", default="openai", help="openai (80 ImageNet templates, default), simple "
                        "('a photo of a {}.') or a file with one template per line containing {}")
    parser.add_argument("--paper-extras", action="store_true", help="also mean-ablate every MLP and every head of "
                        "the layers before the last 4 with the chosen and the random heads (the paper code's setting)")
    add_convention_argument(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def _head_set(value: str):
    """(heads, provenance) from a head set JSON file or inline heads like 10.3,11.0 (checked later on the model)."""
    import re

    from core.cli.common import existing_file
    from core.heads.outputs import parse_heads
    from core.heads.spurious import read_head_set

    # Decided by the text alone (looking for a file first would tell whether a path exists).
    if re.fullmatch(r"[\d\s.,]+", value) or not (value.endswith(".json") or "/" in value or "\\" in value):
        return parse_heads(value), "given on the command line"
    return read_head_set(existing_file(value, "head set file", hint="list the heads inline, e.g. 10.3,11.0"))


def run(args) -> int:
    from core.engine.ablation import component_means
    from core.cli.common import (check_convention, check_templates, classifier_for, count, existing_folder,
                                 model_spec, positive)
    from core.engine.images import image_files
    from core.heads.outputs import check_heads
    from core.heads.spurious import grouped_folder, spurious_report

    check_convention(args.convention)
    count(args.trials, "trials", "--trials", minimum=0)
    positive(args.samples, "--samples", minimum=1000)
    count(args.batch_size, "batch_size", "--batch-size")
    positive(args.seed, "--seed", minimum=0)
    check_templates(args.templates)
    heads, provenance = _head_set(args.heads)
    model_spec(args)
    classnames = args.classnames.split(",") if args.classnames else None
    grouped = grouped_folder(existing_folder(args.images, "grouped folder --images"), classnames=classnames,
                             split=args.split)
    reference = (image_files(existing_folder(args.means_from, "image folder --means-from")) if args.means_from is not None
                 else grouped.paths)
    bundle = load_model(args)
    heads = check_heads(heads, bundle.info)
    if args.random_layers:
        check_heads([(layer, 0) for layer in args.random_layers], bundle.info)
    classifier, described = classifier_for(bundle, grouped.classnames, args.templates, None)
    means_description = (f"{args.means_from} ({len(reference)} images)" if args.means_from
                         else f"the evaluated set itself ({len(reference)} images)")
    means = component_means(bundle, reference, description=means_description, convention=args.convention,
                            batch_size=args.batch_size, skipped=[])
    report = spurious_report(bundle, grouped, classifier, heads, means, provenance=provenance,
                             means_from_evaluated_set=not args.means_from, trials=args.trials, seed=args.seed,
                             random_layers=args.random_layers, paper_extras=args.paper_extras,
                             batch_size=args.batch_size, samples=args.samples)
    if args.json:
        print_json({"model": bundle.info.spec, "classifier": described, **report.to_json()}, device=bundle.device)
        return 0
    _print_report(bundle, report, heads, provenance, described, args)
    return 0


def _print_report(bundle, report, heads, provenance: str, described: str, args) -> None:
    """The spurious-cue table: unmodified, chosen heads ablated, random heads; then each group."""
    from core.heads.spurious import describe_heads

    print(model_line(bundle))
    print(f"evaluated on: {report.evaluated_on}; classes: {', '.join(report.classnames)}; classifier: {described}")
    flag = "  (WARNING: the evaluated set itself; pass --means-from for a held-out reference)" \
        if report.means_from_evaluated_set else ""
    print(f"means from:   {report.means_from}{flag}")
    print(f"heads:        {describe_heads(heads)} ({provenance}); convention {report.convention}, direct-effect "
          "mean-ablation (final LayerNorm statistics frozen)")
    if report.paper_extras:
        print("              with the chosen and the random heads, every MLP and the heads of the layers before the "
              "last 4 are mean-ablated too (--paper-extras)")
    print(f"\n{'':28s} {'overall':>8s} {'worst group':>12s}")
    for name, result in (("unmodified model", report.base), ("chosen heads ablated", report.ablated)):
        print(f"  {name:26s} {100 * result.overall:7.2f}% {100 * result.worst:11.2f}%  "
              f"(worst: {report.group_names[result.worst_group]})")
    print_population(report)
    print("\nper group:      " + "  ".join(f"{name}" for name in report.group_names))
    for name, result in (("unmodified", report.base), ("ablated", report.ablated)):
        print(f"  {name:12s}  " + "  ".join(f"{100 * v:6.2f}%" for v in result.per_group))
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable images, e.g. {report.skipped[0]}")


def print_population(report) -> None:
    """The random baseline: every head set of the chosen size (or the sampled ones), and the chosen set's rank."""
    summary = report.baseline.summary(report.ablated)
    worst, overall = summary["worst"], summary["overall"]
    print(f"  {'random head sets, mean':26s} {100 * overall['mean']:7.2f}% {100 * worst['mean']:11.2f}%  "
          f"({report.baseline.describe()})")
    print(f"  {'  std':26s} {100 * overall['std']:7.2f}  {100 * worst['std']:11.2f}   worst group: 5-95% "
          f"{100 * worst['q05']:.1f}-{100 * worst['q95']:.1f}%, max {100 * worst['max']:.1f}%")
    print(f"  the chosen set's worst group is at percentile {summary['chosen_percentile_worst']:.1f} of these sets "
          f"({100 * summary['share_at_least_chosen_worst']:.2f}% of them do at least as well; "
          f"{100 * summary['chosen_minus_mean_worst']:+.1f} points over their mean)")
