"""`python -m core neurons`: neuron statistics, PCs and sparse text decompositions as a bases artifact."""

from __future__ import annotations

from core import engine
from core.cli.common import add_model_argument, model_line, print_json
from core.progress import TqdmProgress

EPILOG = """examples:
  python -m core neurons --model ViT-B-32/openai --layer 9 --images imagenet_subset --texts 30k.txt --out out/b32-neurons
  python -m core neurons --model toy --layer 2 --images world:2000 --texts toy --out out/toy-neurons \\
      --evaluate heldout_scenes --label-column shape

An interrupted run keeps every finished pass; run the same command again to resume."""


def register(subparsers) -> None:
    import argparse

    parser = subparsers.add_parser(
        "neurons", help="second-order neuron statistics, PCs and sparse text decompositions (bases artifact)",
        description="For every neuron of the chosen MLP layer(s): the mean of its second-order effect over an "
        "image set, its top-k images by deviation norm, the first principal component of those deviations, the "
        "norm threshold, and the PC's sparse decomposition over a text pool (OMP). Writes a bases artifact.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--layer", type=int, nargs="+", required=True, help="MLP layer(s), e.g. 9 (paper: 9 of ViT-B-32)")
    parser.add_argument("--images", required=True,
                        help="folder of images for the statistics, world:N[:SEED] for N generated world scenes, or "
                        "hf:ORG/NAME@REVISION:SPLIT[:COLUMN] (hf:PATH:SPLIT for a dataset saved locally)")
    parser.add_argument("--texts", required=True, help="text pool file (one text per line), or 'toy' for the toy pool")
    parser.add_argument("--out", required=True, help="output folder of the bases artifact")
    parser.add_argument("--k", type=int, default=100, help="top images per neuron for the PC and threshold (default 100)")
    parser.add_argument("--terms", type=int, default=None,
                        help="texts per neuron in the sparse decomposition (default 128, the paper's for d_out 512; "
                        "at most d_out/4 and the pool size)")
    parser.add_argument("--dictionary", default="normalise_texts", choices=("normalise_texts", "original"),
                        help="normalise_texts: each text vector unit norm (default); original: the paper code's "
                        "centring over texts and column scaling")
    parser.add_argument("--mode", default="paper", choices=("paper", "linear"),
                        help="second-order convention: paper (bias and mean shares, x100, /|y|) or linear part only")
    parser.add_argument("--evaluate", metavar="DIR",
                        help="labelled folder for the ablation experiment (ImageFolder, or labels.csv with "
                        "--label-column); use images other than --images")
    parser.add_argument("--label-column", help="with --evaluate: read labels from DIR/labels.csv, this column")
    parser.add_argument("--templates", default="auto", help="with --evaluate: zero-shot templates, as in `ablate`")
    parser.add_argument("--half", action="store_true", help="keep the top-k deviations in float16 (half the memory)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true", help="replace bases of another build in --out")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(func=run)


def _image_set(value: str):
    from core.cli.common import parse_images

    return parse_images(value, generator_split="train")


def _texts(value: str) -> tuple[list[str], str, list[str]]:
    """(texts, pool name, skipped lines) through the one text-pool resolver (`toy` or a file)."""
    from core.engine.text import resolve_text_pool

    pool = resolve_text_pool(value)
    return pool.texts, pool.name, pool.problems


def _evaluation(args, bundle, labelled):
    import torch

    from core.cli.common import classifier_for
    from core.engine.images import iter_image_batches
    from core.neurons.bases import Evaluation

    classifier, described = classifier_for(bundle, labelled.classnames, args.templates, args.label_column)
    labels = torch.tensor(labelled.labels)

    def batches():
        for indices, pixels in iter_image_batches(labelled.paths, bundle.preprocess, args.batch_size, skipped=[]):
            yield pixels, labels[indices]

    return Evaluation(batches, classifier, labelled.description, described, -(-len(labels) // args.batch_size))




def run(args) -> int:
    import sys
    from pathlib import Path

    from core.artifacts.store import load_artifact
    from core.neurons.bases import BuildOptions, build_neuron_bases, load_neuron_basis, read_ablation_table

    from core import guards
    from core.cli.common import check_templates, count, labelled_source, model_spec, positive

    count(args.batch_size, "batch_size", "--batch-size")
    count(args.k, "gallery", "--k")
    count(args.terms, "texts", "--terms")
    for layer in args.layer:
        positive(layer, "--layer", minimum=0)
    check_templates(args.templates)
    guards.check_output_path(args.out, "output folder --out")
    model_spec(args)
    image_set = _image_set(args.images)
    texts, pool_name, problems = _texts(args.texts)
    labelled = labelled_source(args.evaluate, args.label_column, "--evaluate") if args.evaluate is not None else None
    bundle = engine.load_clip(args.model, device=args.device)
    evaluation = _evaluation(args, bundle, labelled) if labelled else None
    options = BuildOptions(k=args.k, n_terms=args.terms, dictionary=args.dictionary, mode=args.mode, half=args.half,
                           batch_size=args.batch_size)
    log = (lambda line: print(line, file=sys.stderr))
    if problems:
        log(f"text pool {pool_name}: {len(problems)} lines skipped (e.g. {problems[0]})")
    if evaluation and image_set.kind == "folder" and Path(args.evaluate).resolve() == Path(image_set.params["root"]):
        log("note: --evaluate is the statistics' own image set (the paper code's protocol); a held-out set is fairer")
    path = build_neuron_bases(bundle, args.out, layers=args.layer, image_set=image_set, texts=texts,
                              pool_name=pool_name, options=options, evaluation=evaluation, progress=TqdmProgress(),
                              overwrite=args.overwrite, log=log)
    artifact = load_artifact(path, expect_model=bundle.info.identity())
    bases = [load_neuron_basis(artifact, layer, bundle.info) for layer in args.layer]
    ablations = read_ablation_table(artifact)
    if args.json:
        print_json({"out": str(path), "model": bundle.info.spec, "image_set": image_set.description,
                    "text_pool": {"name": pool_name, "count": len(texts)}, "dictionary": args.dictionary,
                    "layers": {str(b.stats.layer): b.provenance for b in bases}, "ablations": ablations,
                    "evaluated_on": evaluation.description if evaluation else None}, device=bundle.device)
        return 0
    _print_report(bundle, path, image_set, pool_name, texts, bases, evaluation, ablations, args)
    return 0


def _print_report(bundle, path, image_set, pool_name: str, texts, bases, evaluation, ablations, args) -> None:
    """What was written, each layer's fit, and the ablation table when an evaluation set was given."""
    print(model_line(bundle))
    print(f"wrote {path}\nimage set: {image_set.description}\ntext pool: {pool_name} ({len(texts)} texts); "
          f"dictionary: {args.dictionary}; convention: {args.mode}")
    for basis in bases:
        stats = basis.stats
        print(f"layer {stats.layer}: {len(stats.pcs)} neurons, k = {stats.k}, mean PC variance share "
              f"{float(stats.pc_variance.mean()):.3f}, mean reconstruction cosine "
              f"{basis.provenance['reconstruction_cosine']:.3f} ({basis.provenance['terms']} terms)")
    if evaluation:
        print(f"ablations: statistics from {image_set.description}; evaluated on {evaluation.description}; "
              f"classifier: {evaluation.classifier_description}")
        for row in ablations:
            print(f"  layer {row['layer']}  {row['ablation']:38s} {100 * row['accuracy']:6.2f}%")
