"""`python -m core concepts`: the concepts an image activates, from its neurons' second-order effects."""

from __future__ import annotations

from core import engine
from core.cli.common import add_model_argument, model_line, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "concepts", help="concept discovery: activated neurons of an image and the words they write",
        description="Neurons whose second-order effect on IMAGE exceeds their threshold (the k-th largest over the "
        "bases' image set), and the pool's words ranked by sum over those neurons of coefficient x effect size. "
        "Needs neuron bases (python -m core neurons ...).")
    add_model_argument(parser)
    parser.add_argument("--image", required=True, help="path to an image file")
    parser.add_argument("--bases", help="neuron bases folder or ORG/NAME@SHA (default: $CLIPSCOPE_BASES or the "
                        "model's shipped bases)")
    parser.add_argument("--layer", type=int, help="one layer of the bases (default: every layer they hold)")
    parser.add_argument("--top", type=int, default=10, help="words to print (default 10)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args) -> int:
    from core.artifacts.hub import check_user_source
    from core.cli.common import count, existing_file, model_spec
    from core.engine.labels import neuron_label
    from core.neurons.concepts import image_concepts
    from core.engine.images import load_image
    from core.neurons.bases import find_neuron_bases, load_neuron_basis, neuron_layers

    count(args.top, "top", "--top")
    if args.bases is not None:
        check_user_source(args.bases)
    model_spec(args)
    image = load_image(existing_file(args.image, "image file", hint="upload an image"))
    bundle = engine.load_clip(args.model, device=args.device)
    artifact = find_neuron_bases(bundle, args.bases)
    layers = [args.layer] if args.layer is not None else neuron_layers(artifact)
    results = []
    for layer in layers:
        basis = load_neuron_basis(artifact, layer, bundle.info)
        results.append((basis, image_concepts(bundle, basis, image, top=args.top)))
    if args.json:
        print_json([{**concepts.as_dict(), "provenance": basis.provenance} for basis, concepts in results], device=bundle.device)
        return 0
    print(model_line(bundle))
    for basis, concepts in results:
        print(f"\n{basis.describe()}")
        print(f"layer {concepts.layer}: {len(concepts.neurons)} activated neurons (effect above threshold)"
              + (": " + ", ".join(f"{neuron_label(concepts.layer, n)} ({v / t:.2f}x)" for n, v, t in
                                  zip(concepts.neurons[:12], concepts.norms, concepts.thresholds)) if concepts.neurons else ""))
        for rank, (text, score) in enumerate(concepts.words, 1):
            print(f"  {rank:3d}. {text:40s} {score:+.4f}")
    return 0
