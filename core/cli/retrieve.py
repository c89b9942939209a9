"""`python -m core retrieve`: nearest gallery images by one head's contribution (property retrieval)."""

from __future__ import annotations

import argparse

from core import engine
from core.cli.common import add_convention_argument, add_model_argument, model_line, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "retrieve", help="property-based retrieval: gallery images whose head contribution is nearest the query's",
        description="Rank the images of a gallery folder by the similarity of one head's contribution to the "
        "query image's (the paper's property-based retrieval). The gallery's contributions for every head of "
        "--layer are cached, so other heads of that layer and other queries are fast.")
    add_model_argument(parser)
    parser.add_argument("--image", required=True, help="query image file")
    parser.add_argument("--gallery", required=True, help="folder of gallery images (searched recursively)")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--head", type=int, required=True)
    parser.add_argument("--k", type=int, default=10, help="images to return (default 10)")
    parser.add_argument("--metric", default="cosine", help="cosine (default), centered (cosine after removing the "
                        "head's gallery mean) or dot (the paper code's raw dot product)")
    add_convention_argument(parser)
    parser.add_argument("--exclude-query", action=argparse.BooleanOptionalAction, default=True,
                        help="leave out gallery images that are the query itself (the same file or the same pixels; "
                        "default: yes, as the UI); --no-exclude-query keeps them")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the cached gallery index")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def _gallery(args, bundle, heads, paths):
    from core.heads.retrieval import build_gallery, gallery_cache_path, load_gallery, save_gallery

    cached = gallery_cache_path(bundle, paths, heads, args.convention)
    if not args.no_cache and cached.is_file():
        return load_gallery(cached, expect_model=bundle.info.identity())
    skipped: list[str] = []
    index = build_gallery(bundle, paths, heads, description=f"{args.gallery} ({len(paths)} images)",
                          convention=args.convention, batch_size=args.batch_size, skipped=skipped)
    if not args.no_cache:
        save_gallery(index, cached)
    return index


def run(args) -> int:
    from core.cli.common import check_convention, count, existing_file, existing_folder, model_spec
    from core.errors import ConfigError
    from core.heads.outputs import check_heads, heads_of_layers
    from core.engine.images import image_files, load_image
    from core.engine.labels import head_label
    from core.heads.retrieval import METRICS, nearest, query_contributions, query_in_gallery

    check_convention(args.convention)
    if args.metric not in METRICS:
        raise ConfigError(f"unknown --metric {args.metric[:40]!r}; choose one of {', '.join(METRICS)}")
    count(args.k, "top", "--k")
    count(args.batch_size, "batch_size", "--batch-size")
    model_spec(args)
    image = load_image(existing_file(args.image, "query image", hint="upload an image"))
    paths = image_files(existing_folder(args.gallery, "gallery folder", hint="upload the gallery images"))
    bundle = engine.load_clip(args.model, device=args.device)
    (head,) = check_heads([(args.layer, args.head)], bundle.info)
    layer_heads = heads_of_layers(bundle.info, [args.layer])
    index = _gallery(args, bundle, layer_heads, paths)
    query = query_contributions(bundle, image, [head], convention=args.convention)[0]
    left_out = query_in_gallery(index, args.image) if args.exclude_query else []
    found = nearest(index, query, head, k=args.k, metric=args.metric, exclude=left_out)
    results = [{"rank": rank, "path": index.paths[i], "score": score} for rank, (i, score) in enumerate(found, 1)]
    if args.json:
        print_json({"model": bundle.info.spec, "query": args.image, "layer": args.layer, "head": args.head,
                    "label": head_label(args.layer, args.head),
                    "metric": args.metric, "convention": args.convention, "gallery": index.description,
                    "excluded_query": [index.paths[i] for i in left_out], "results": results}, device=bundle.device)
        return 0
    print(model_line(bundle))
    print(f"query: {args.image}; head {head_label(args.layer, args.head)}; gallery: {index.description}; "
          f"metric: {args.metric}; convention: {args.convention}"
          + (f"; left out the query itself ({len(left_out)} gallery image(s))" if left_out else ""))
    for row in results:
        print(f"  {row['rank']:3d}. {row['score']:+.4f}  {row['path']}")
    return 0
