"""Reproduce the papers' ImageNet-segmentation tables, given the weights and `gtsegs_ijcv.mat` (best on a GPU).

    python -m core.segmentation.papers --data gtsegs_ijcv.mat --device cuda --b32-bases DIR [--out results.json]

- Paper 1 (ICLR 2024, its ImageNet-segmentation table): a LAION OpenCLIP ViT (the size is not
  stated; the script default, ViT-H-14 laion2b_s32b_b79k, is used), official protocol: raw attention, rollout,
  GradCAM, Chefer et al., and the image-token decomposition (`heads`).
- Paper 2 (ICLR 2025, Table 4): OpenAI ViT-B-32 (QuickGELU), official protocol: the same
  baselines, `heads`, and the top-200 second-order neurons of layers 8-10 (`neurons`), which need neuron bases of
  ViT-B-32/openai covering layers 8, 9, 10:
      python -m core bases build --model ViT-B-32/openai --images IMAGENET_TRAIN_SUBSET --texts 30k.txt \\
          --neuron-layers 8 9 10 --out b32-bases
  (paper 2's PCs come from every 250th ImageNet train image: 5,124 images).

Each result is printed next to the published number; `--protocol aligned` adds the corrected protocol (masks
cropped like the images). Runs resume (segeval's state files) and write JSON with everything that produced them.
Baseline settings are reconstructions, not released code (docs/reproduce.md, "Segmentation baselines").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Published (pixel accuracy, mIoU, mAP), percent.
PAPER_1 = {"rollout": (60.63, 40.64, 74.47), "raw-attention": (65.67, 43.83, 76.05),
           "gradcam": (70.27, 44.50, 70.30), "chefer": (69.21, 47.47, 78.29), "heads": (75.21, 54.50, 81.61)}
PAPER_2 = {"rollout": (61.8, 42.6, 74.0), "gradcam": (67.3, 39.3, 61.9), "chefer": (68.9, 49.1, 79.7),
           "raw-attention": (69.6, 49.8, 80.0), "heads": (76.5, 58.1, 84.1), "neurons": (78.1, 59.0, 84.9)}
TABLES = {"p1": ("ViT-H-14/laion2b_s32b_b79k", PAPER_1), "p2": ("ViT-B-32/openai", PAPER_2)}


def _progress(iterable, desc: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True, unit="batch")


def run_table(name: str, model: str, methods: list[str], published: dict, args) -> list[dict]:
    from core.engine.models import load_clip
    from core.segmentation.datasets import first_images, open_dataset, read_classnames
    from core.segmentation.evaluate import evaluate
    from core.segmentation.methods import MethodOptions

    classnames = read_classnames(args.classes) if args.classes else None
    dataset = open_dataset(args.data, classnames)
    if args.limit:
        dataset = first_images(dataset, args.limit)
    bundle = load_clip(model, device=args.device)
    rows = []
    for protocol in ["official"] + (["aligned"] if args.protocol == "aligned" else []):
        chosen = list(methods)
        options = MethodOptions()
        if "neurons" in chosen:
            if args.b32_bases:
                options = MethodOptions(neuron_layers=(8, 9, 10), top_k=200, bases=args.b32_bases)
            else:
                chosen = [m for m in chosen if not m.endswith("neurons")]
                print(f"{name}: neuron methods skipped (no --b32-bases; see this module's docstring)", file=sys.stderr)
        report = evaluate(bundle, dataset, chosen, protocol=protocol, options=options, batch_size=args.batch_size,
                          state_dir=args.state_dir, progress=_progress)
        for result in report.results:
            m = result.metrics
            rows.append({"table": name, "model": model, "protocol": protocol, "method": result.method,
                         "pixel_accuracy": 100 * m["pixel_accuracy"], "miou": 100 * m["miou"], "map": 100 * m["map"],
                         "ap_foreground": 100 * m["ap_foreground"], "images": m["images"],
                         "published": published.get(result.method), "description": result.description,
                         "dataset": report.dataset, "classes": report.classes})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="gtsegs_ijcv.mat (ImageNet-segmentation, 4,276 images)")
    parser.add_argument("--tables", nargs="+", default=["p1", "p2"], choices=sorted(TABLES))
    parser.add_argument("--p1-model", default=TABLES["p1"][0])
    parser.add_argument("--p2-model", default=TABLES["p2"][0])
    parser.add_argument("--b32-bases", default=None, help="neuron bases of the paper-2 model covering layers 8-10")
    parser.add_argument("--protocol", default="official", choices=("official", "aligned"),
                        help="aligned: also the corrected protocol (official always runs)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--state-dir", default=None, help="resume folder (default $CLIPSCOPE_CACHE/segeval)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (a quick check)")
    parser.add_argument("--classes", default=None, help="class names to predict among (default: ImageNet's 1,000)")
    parser.add_argument("--out", default=None, help="write every row as JSON here")
    args = parser.parse_args(argv)
    from core.errors import CoreError
    from core.writes import replace_file

    def write_out(rows: list) -> None:  # a file this script wrote before is replaced; any other file never is
        replace_file(args.out, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2), encoding="utf-8"),
                     ours=_our_rows, overwrite=True, what="--out file", command="python -m core.segmentation.papers")

    if args.out:
        try:
            write_out([])  # refused now, before hours of work, if --out is not ours; an empty table until the end
        except CoreError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    baselines = ["raw-attention", "rollout", "gradcam", "chefer", "heads"]
    rows = []
    try:
        if "p1" in args.tables:
            rows += run_table("paper 1", args.p1_model, baselines, PAPER_1, args)
        if "p2" in args.tables:
            rows += run_table("paper 2", args.p2_model, baselines + ["neurons", "random-neurons"], PAPER_2, args)
    except CoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'table':8s} {'model':28s} {'protocol':9s} {'method':15s} {'pix acc':>8s} {'mIoU':>6s} {'mAP':>6s} "
          f"{'AP-fg':>6s}   published (pix acc / mIoU / mAP)")
    for row in rows:
        published = "/".join(f"{v:.2f}" for v in row["published"]) if row["published"] else "-"
        print(f"{row['table']:8s} {row['model']:28s} {row['protocol']:9s} {row['method']:15s} "
              f"{row['pixel_accuracy']:8.2f} {row['miou']:6.2f} {row['map']:6.2f} {row['ap_foreground']:6.2f}   "
              f"{published if row['protocol'] == 'official' else ''}")
    if args.out:
        write_out(rows)
    return 0


def _our_rows(path: Path) -> bool:
    """True for a JSON file of rows this script wrote (a list of objects with table, method and protocol)."""
    try:
        if path.stat().st_size > 50_000_000:
            return False
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(rows, list) and all(isinstance(r, dict) and {"table", "method", "protocol"} <= set(r)
                                          for r in rows)


if __name__ == "__main__":
    sys.exit(main())
