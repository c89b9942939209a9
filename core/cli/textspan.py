"""`python -m core textspan`: label attention heads with texts (TextSpan) and write them as bases."""

from __future__ import annotations

import argparse

from core import engine
from core.cli.common import add_convention_argument, add_model_argument, model_line, print_json
from core.progress import TqdmProgress

EXAMPLES = """examples:
  python -m core textspan --model toy --images scenes/images --texts core/data/toy_texts.txt --out bases/toy
  python -m core textspan --model ViT-B-16/laion2b_s34b_b88k --images val/ --texts descriptions.txt \\
      --layers 8 9 10 11 --per-head 20 --out bases/b16 --evaluate imagenet_val_subset/ --m 1 2 5 10 20
Rerunning the same command resumes: heads already written are kept and skipped."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "textspan", help="TextSpan: per head, the texts that explain its outputs; writes a bases artifact",
        description="For each chosen head, greedily pick the texts of a pool whose directions explain the most "
        "variance of the head's contributions over an image set (Gandelsman et al., ICLR 2024), and write them as "
        "a bases artifact (one tensor group per head, a table of texts). Optionally run the paper's completeness "
        "check on a labelled folder.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--images", required=True, help="folder of images to fit on (searched recursively), "
                        "world:N[:SEED] or hf:ORG/NAME@REVISION:SPLIT[:COLUMN]")
    parser.add_argument("--texts", required=True, help="text pool file, one text per line (empty and duplicate "
                        "lines are reported and skipped), or 'toy' for the toy pool")
    parser.add_argument("--pool-name", help="name recorded for the text pool (default: the file name)")
    parser.add_argument("--layers", type=int, nargs="+", help="layers whose heads to fit (default: the last 4)")
    parser.add_argument("--heads", help="individual heads instead of --layers, e.g. 10.3,11.0 (layer.head)")
    parser.add_argument("--per-head", type=int, default=20, help="texts per head (default 20)")
    parser.add_argument("--rank", type=int, help="dimension of the data span (default 80, as the paper code)")
    parser.add_argument("--criterion", default="std", help="std (paper code, default) or explained_variance "
                        "(the paper's stated objective)")
    parser.add_argument("--span", default="data", help="data (top singular vectors of the head outputs, default) "
                        "or weights (the head's W_OV rows plus its constant offsets)")
    add_convention_argument(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", required=True, help="output folder of the bases artifact")
    parser.add_argument("--overwrite", action="store_true", help="replace bases an earlier build wrote in --out "
                        "(files its manifest lists); other files are never replaced or deleted")
    parser.add_argument("--evaluate", help="completeness check on this labelled folder (ImageFolder layout, or "
                        "DIR/labels.csv with --label-column)")
    parser.add_argument("--label-column", help="with --evaluate: read labels from DIR/labels.csv, this column")
    parser.add_argument("--templates", default="auto", help="with --evaluate: zero-shot templates, as for ablate "
                        "(openai, simple, toy, a file, or auto)")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 2, 5, 10, 20],
                        help="with --evaluate: texts per head to rebuild each head from (default 1 2 5 10 20, "
                        "capped at --per-head)")
    parser.add_argument("--no-earlier-ablation", action="store_true",
                        help="with --evaluate: keep the heads of earlier layers instead of mean-ablating them")
    parser.add_argument("--show", type=int, default=5, help="texts printed per head (default 5)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    parser.set_defaults(func=run)


def _heads(args, info):
    from core.errors import ConfigError
    from core.heads.outputs import check_heads, default_heads, heads_of_layers, parse_heads

    if args.heads and args.layers:
        raise ConfigError("give --heads or --layers, not both")
    if args.heads:
        return check_heads(parse_heads(args.heads), info)
    return heads_of_layers(info, args.layers) if args.layers else default_heads(info)




def _check_inputs(args):
    """Everything that can be checked before the model loads: (text pool, image files, labelled set or None)."""
    from core import guards
    from core.cli.common import check_convention, check_templates, count, labelled_source, model_spec, parse_images
    from core.engine.text import check_texts, resolve_text_pool
    from core.errors import ConfigError
    from core.heads.outputs import parse_heads
    from core.heads.textspan import CRITERIA, SPANS

    check_convention(args.convention)
    if args.criterion not in CRITERIA or args.span not in SPANS:
        raise ConfigError(f"--criterion must be one of {', '.join(CRITERIA)} and --span one of {', '.join(SPANS)}")
    count(args.batch_size, "batch_size", "--batch-size")
    count(args.per_head, "texts", "--per-head")
    count(args.rank, "texts", "--rank")
    count(args.show, "top", "--show", minimum=0)
    for m in args.m:
        count(m, "texts", "--m")
    if args.heads and args.layers:
        raise ConfigError("give --heads or --layers, not both")
    if args.heads:
        parse_heads(args.heads)
    if args.pool_name is not None:
        check_texts([args.pool_name], what="--pool-name")
    check_templates(args.templates)
    guards.check_output_path(args.out, "output folder --out")
    model_spec(args)
    pool = resolve_text_pool(args.texts, name=args.pool_name)
    paths = parse_images(args.images, generator_split="heldout").local_paths()
    labelled = labelled_source(args.evaluate, args.label_column, "--evaluate") if args.evaluate is not None else None
    return pool, paths, labelled


def run(args) -> int:
    import sys

    from core.heads.bases import build_textspan_bases, finish_textspan_bases

    pool, paths, labelled = _check_inputs(args)
    texts, problems = pool.texts, pool.problems
    for problem in problems:
        print(f"text pool {pool.name}: {problem}", file=sys.stderr)
    bundle = engine.load_clip(args.model, device=args.device)
    heads = _heads(args, bundle.info)
    build = build_textspan_bases(
        bundle, paths, texts, heads, args.out, pool_name=pool.name,
        image_description=str(args.images), per_head=args.per_head, rank=args.rank,
        criterion=args.criterion, span=args.span, convention=args.convention, batch_size=args.batch_size,
        overwrite=args.overwrite, progress=TqdmProgress())
    completeness = _completeness(args, bundle, build, labelled) if labelled else None
    extra = None
    if completeness:
        extra = {"accuracy_unablated": completeness["baseline"],
                 **{f"accuracy_m{row['m']}": row["accuracy"] for row in completeness["rows"]}}
    path = finish_textspan_bases(build, completeness, extra)
    if args.json:
        print_json({"model": bundle.info.spec, "out": str(path), "heads": [list(h) for h in build.heads],
                    "computed": [list(h) for h in build.computed], "skipped_images": build.skipped,
                    "text_pool_problems": problems, "completeness": completeness}, device=bundle.device)
        return 0
    _print_report(bundle, build, path, pool, completeness, args)
    return 0


def _print_report(bundle, build, path, pool, completeness, args) -> None:
    """Each head's chosen texts with their variance shares, and the completeness table if one was run."""
    from core.artifacts.store import load_artifact
    from core.engine.labels import head_label
    from core.heads.bases import head_text_rows

    texts, problems = pool.texts, pool.problems
    print(model_line(bundle))
    print(f"image set: {args.images} ({build.image_count} images); text pool: {pool.name} ({len(texts)} texts, "
          f"{len(problems)} lines skipped); convention: {args.convention}")
    print(f"fitted {len(build.computed)} heads, {len(build.heads) - len(build.computed)} already written")
    artifact = load_artifact(path)
    for head in build.heads:
        rows = head_text_rows(artifact, head)
        print(f"\n{head_label(*head)}  (rank {rows[0]['rank']}; {args.per_head} texts explain "
              f"{100 * rows[-1]['cumulative_variance']:.1f}% of the variance)")
        for row in rows[: args.show]:
            print(f"  {100 * row['variance_explained']:5.1f}%  {row['text']}")
    if completeness:
        _print_completeness(completeness)
    print(f"\nbases written to {path}")


def _completeness(args, bundle, build, labelled) -> dict:
    from core.cli.common import classifier_for
    from core.heads.completeness import completeness_on_folder

    classifier, described = classifier_for(bundle, labelled.classnames, args.templates, args.label_column)
    ms = sorted({m for m in args.m if m <= args.per_head})
    if len(ms) < len(set(args.m)):
        import sys

        print(f"completeness: m values above --per-head {args.per_head} dropped", file=sys.stderr)
    skipped: list[str] = []
    report = completeness_on_folder(bundle, labelled, classifier, build.result, build.heads, build.head_means, ms,
                                    ablate_earlier=not args.no_earlier_ablation, convention=args.convention,
                                    batch_size=args.batch_size, skipped=skipped)
    return {"evaluated_on": labelled.description, "classifier": described, "count": report.count,
            "baseline": report.baseline, "rows": [{"m": m, "accuracy": a} for m, a in report.rows],
            "earlier_layers_mean_ablated": report.ablate_earlier, "first_layer": report.first_layer,
            "means_from": "the TextSpan image set", "skipped": skipped}


def _print_completeness(report: dict) -> None:
    earlier = (f"heads of layers 0..{report['first_layer'] - 1} mean-ablated, " if report["earlier_layers_mean_ablated"]
               and report["first_layer"] > 0 else "")
    print(f"\ncompleteness on {report['evaluated_on']} ({report['classifier']}; {earlier}MLPs kept)")
    print(f"  unablated model      {100 * report['baseline']:6.2f}%")
    for row in report["rows"]:
        print(f"  m = {row['m']:<4d} texts/head {100 * row['accuracy']:6.2f}%")
