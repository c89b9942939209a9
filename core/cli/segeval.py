"""`python -m core segeval`: zero-shot segmentation metrics of one or more methods over a dataset (resumable)."""

from __future__ import annotations

import argparse

from core.cli.common import add_model_argument, model_line, print_json
from core.cli.segment import (METHOD_CHOICES, add_method_options, add_yes_no,
                              check_device, check_method_inputs, load_on_device, method_options, resolve_method,
                              yes_no)

EPILOG = """examples:
  python -m core segeval --dataset world:500:2718 --method heads --method raw-attention --method oracle
  python -m core segeval --dataset world-pairs:200:4721 --method heads --method rollout --method random-neurons
  python -m core segeval --model ViT-B-32/openai --dataset gtsegs_ijcv.mat --method neurons --neuron-layers 8 9 10 \\
      --bases b32-bases --protocol official

DATASET: world:N[:SEED] (held-out generated scenes, exact masks), world-pairs:N[:SEED[:K]] (held-out composites of
K = 2..4 objects of different classes; the map is made for the first object's class and scored with the others'
pixels as negatives: class specificity), a gtsegs_ijcv.mat file (ImageNet-segmentation), or a folder with images/
and masks/ (same relative names, PNG masks; optional labels.csv with file,class).
Metrics as the papers' code: pixel accuracy and mIoU summed over the dataset, mAP = mean over images of the
two-channel AP; also AP over the foreground alone and per-image mIoU. An interrupted run resumes: run the
same command again (finished images are read back from the state folder). random-neurons runs --random-draws times
(seeds --seed, --seed + 1, ...) and reports the mean with its spread."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segeval", help="zero-shot segmentation metrics over a dataset (pixel accuracy, mIoU, mAP, AP-foreground)",
        description="Evaluate segmentation methods on a dataset with the papers' protocol and metrics.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--dataset", required=True, help="world:N[:SEED], a gtsegs_ijcv.mat file, or a folder")
    parser.add_argument("--method", required=True, action="append",
                        help=f"{METHOD_CHOICES}|oracle (repeat for several; oracle = the mask averaged per patch)")
    parser.add_argument("--protocol", default="aligned",
                        help="official (the papers' code exactly: predicted class, masks squashed) or aligned "
                        "(default: masks cropped like the image; the options below)")
    parser.add_argument("--class-source", choices=("given", "predicted"), default=None,
                        help="aligned: the dataset's class label or the zero-shot prediction (default: given when "
                        "the dataset is labelled)")
    parser.add_argument("--threshold", default=None,
                        help="aligned: 'mean' or a number in [0, 1] for every method (default: each method's rule)")
    add_yes_no(parser, "--clamp", "aligned: clamp at 0 before min-max (default: each method's rule; heads: yes)")
    add_yes_no(parser, "--subtract-class-mean", "aligned, heads: subtract the map's mean over classes (default yes)")
    parser.add_argument("--classes", default=None,
                        help="file of class names (one per line) to predict among on an unlabelled dataset "
                        "(default: the 1,000 ImageNet classes)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of the dataset")
    parser.add_argument("--random-draws", type=int, default=10,
                        help="random-neurons: independent draws of random neurons (default 10; mean and spread)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--state-dir", default=None,
                        help="where finished images are recorded for resuming (default $CLIPSCOPE_CACHE/segeval)")
    parser.add_argument("--save-maps", metavar="DIR", default=None,
                        help="write DIR/METHOD/{i:05d}_map.npy (the scores the metrics used) and DIR/{i:05d}_mask.png")
    add_method_options(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(func=run)


def _progress(iterable, desc: str, total: int | None = None):
    import sys

    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True, unit="batch")


def run(args) -> int:
    import sys

    from core import guards
    from core.cli.common import count, existing_file, model_spec, positive
    from core.errors import ConfigError
    from core.segmentation.datasets import first_images, open_dataset, read_classnames
    from core.segmentation.evaluate import MAX_RANDOM_DRAWS, ORACLE, evaluate
    from core.segmentation.protocols import PROTOCOLS, parse_threshold

    if args.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {args.protocol[:40]!r}; choose one of {', '.join(PROTOCOLS)}")
    methods = [m if m == ORACLE else resolve_method(m, args.random) for m in args.method]
    threshold = parse_threshold(args.threshold)
    count(args.batch_size, "batch_size", "--batch-size")
    positive(args.random_draws, "--random-draws", maximum=MAX_RANDOM_DRAWS)
    count(args.limit, "gallery", "--limit")
    check_method_inputs(args)
    classnames = read_classnames(existing_file(args.classes, "class names file")) if args.classes is not None else None
    state_dir = guards.check_output_path(args.state_dir, "--state-dir folder") if args.state_dir is not None else None
    maps_dir = guards.check_output_path(args.save_maps, "--save-maps folder") if args.save_maps is not None else None
    check_device(args)
    spec = model_spec(args)
    dataset = open_dataset(args.dataset, classnames)
    if args.limit is not None:
        dataset = first_images(dataset, args.limit)
    bundle = load_on_device(args, spec)
    report = evaluate(bundle, dataset, methods, protocol=args.protocol, options=method_options(args, bundle),
                      class_source=args.class_source, threshold=threshold, clamp=yes_no(args.clamp),
                      subtract_class_mean=yes_no(args.subtract_class_mean), batch_size=args.batch_size,
                      state_dir=state_dir, save_maps=maps_dir, progress=_progress,
                      log=lambda line: print(line, file=sys.stderr), random_draws=args.random_draws)
    if args.json:
        print_json(report.as_dict())
        return 0
    print(model_line(bundle))
    print(f"dataset: {report.dataset}\nclasses: {report.classes}\nprotocol: {report.protocol}")
    if report.class_accuracy is not None:
        print(f"zero-shot accuracy of the predicted class: {100 * report.class_accuracy:.1f}%")
    oracle = next((r for r in report.results if r.method == ORACLE), None)
    header = f"{'method':16s} {'pixel acc':>9s} {'mIoU':>6s} {'mAP':>6s} {'AP-fg':>6s} {'mIoU/img':>8s}"
    print("\n" + header + ("  AP-fg / oracle" if oracle else ""))
    for result in report.results:
        m = result.metrics
        row = (f"{result.method:16s} {100 * m['pixel_accuracy']:9.2f} {100 * m['miou']:6.2f} {100 * m['map']:6.2f} "
               f"{100 * m['ap_foreground']:6.2f} {100 * m['miou_per_image']:8.2f}")
        if oracle:
            row += f"  {m['ap_foreground'] / oracle.metrics['ap_foreground']:.2f}"
        print(row)
    if report.class_specificity:
        _print_specificity(report)
    print()
    for result in report.results:
        resumed = f"; {result.resumed} images read back" if result.resumed else ""
        print(f"{result.description}; protocol {result.protocol.describe()}{resumed}")
    print(f"{report.results[0].metrics['images']} images. Percent; pixel accuracy and mIoU summed over the dataset, "
          "mAP and AP-fg averaged over images.")
    if report.maps_dir:
        print(f"maps and masks: {report.maps_dir}")
    return 0


def _print_specificity(report) -> None:
    """Composites: per method, how often the map is higher on the mapped object than on the others."""
    print(f"\nclass specificity (map of the first object's class; the other objects' pixels are its negatives; "
          f"zero-shot prediction is one of the objects' classes in {100 * report.objects_recognised:.1f}%):")
    print(f"{'method':16s} {'mean A > mean B':>15s} {'95% interval':>15s} {'AP(A vs B)':>10s}")
    for method, spec in report.class_specificity.items():
        share = spec["share_target_above_others"]
        if "draws" in spec:
            print(f"{method:16s} {100 * share:14.1f}% {'':>15s} {100 * spec['ap_target_vs_others']:10.1f}  "
                  f"(mean of {spec['draws']} draws; share std {100 * spec['share_std']:.1f}, "
                  f"min {100 * spec['share_min']:.1f}, max {100 * spec['share_max']:.1f})")
            continue
        low, high = spec["share_interval_95"]
        print(f"{method:16s} {100 * share:14.1f}% {f'{100 * low:.1f}-{100 * high:.1f}%':>15s} "
              f"{100 * spec['ap_target_vs_others']:10.1f}")
