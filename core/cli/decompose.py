"""`python -m core decompose`: one image against texts, per layer, head, MLP and token."""

from __future__ import annotations

from core.cli.common import (add_convention_argument, add_model_argument, check_convention, existing_file, load_model,
                             model_line, model_spec, print_json)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "decompose",
        help="split an image-text cosine similarity into layers, heads, MLPs and tokens",
        description="Print each layer's and head's contribution to the cosine similarity of IMAGE and TEXT, "
        "the MLP terms, the top tokens and the reconstruction error.",
    )
    add_model_argument(parser)
    parser.add_argument("--image", required=True, help="path to an image file")
    parser.add_argument("--text", required=True, action="append", help="a text (repeat for several)")
    add_convention_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (one object per text; schema in docs/cli.md)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from core import guards
    from core.engine.decomposition import decompose_image
    from core.engine.images import load_image
    from core.engine.text import check_texts

    check_texts(args.text, what="--text")
    guards.check_count(len(args.text), "top", "the number of --text")
    check_convention(args.convention)
    model_spec(args)
    image = load_image(existing_file(args.image, "image file", hint="upload an image"))
    bundle = load_model(args)
    result = decompose_image(bundle, image, args.text, convention=args.convention)
    if args.json:
        objects = result.to_json()
        print_json(objects[0] if len(objects) == 1 else objects, device=bundle.device)
        return 0
    print(model_line(bundle))
    print(f"image: {args.image}   convention: {result.convention}   "
          f"reconstruction error: {result.reconstruction_error:.2e} (relative, vs encode_image)")
    for index, text in enumerate(result.texts):
        print(f"\ntext: {text!r}   cosine: {float(result.cosine[index]):+.5f}")
        print(f"  embedding term: {float(result.embedding_term[index]):+.5f}")
        heads = result.heads[:, :, index]
        header = "  layer |  total  | MLP     | " + " ".join(f"h{h:<6d}" for h in range(heads.shape[1]))
        print(header)
        for layer in range(heads.shape[0]):
            row = " ".join(f"{float(v):+.4f}" for v in heads[layer])
            total = float(heads[layer].sum() + result.mlps[layer, index])
            print(f"  {layer:5d} | {total:+.4f} | {float(result.mlps[layer, index]):+.4f} | {row}")
        tops = ", ".join(f"token {t['token']} (row {t['row']}, col {t['col']}) {t['score']:+.4f}" for t in result.top_tokens(index))
        print(f"  top tokens: {tops}")
    return 0
