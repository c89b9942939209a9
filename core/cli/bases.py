"""`python -m core bases ...`: check, inspect, pull and push precomputed bases.

Each subcommand is one `_add_<name>(subparsers)` listed in SUBCOMMANDS; a new
one (e.g. `build`) is a function that adds its parser and sets
`bases_func=<its run function>` with `set_defaults`. The engine is imported
inside the run functions so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from core.cli.common import add_model_argument
from core.errors import BasesError

if TYPE_CHECKING:
    from core.artifacts.store import Artifact

EXAMPLES = """examples:
  python -m core bases verify out/toy-bases
  python -m core bases info org/clip-bases@<commit sha>
  python -m core bases pull org/clip-bases --revision <commit sha>
  python -m core bases push out/toy-bases --repo-id org/clip-bases"""


def _add_verify(subparsers) -> None:
    parser = subparsers.add_parser("verify", help="check an artifact folder; non-zero exit on any problem")
    parser.add_argument("path", metavar="DIR")
    parser.set_defaults(bases_func=_verify)


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="summarise the manifest of a folder or ORG/NAME@SHA")
    parser.add_argument("source", metavar="DIR|REPO@REV")
    parser.add_argument("--allow-unpinned", action="store_true", help="accept a branch name as revision")
    parser.set_defaults(bases_func=_info)


def _add_pull(subparsers) -> None:
    parser = subparsers.add_parser("pull", help="download a Hub dataset repo of bases into the HF cache")
    parser.add_argument("repo_id", metavar="REPO")
    parser.add_argument("--revision", required=True, metavar="SHA", help="40-hex commit sha to pin")
    parser.add_argument("--cache-dir", default=None, metavar="D", help="Hugging Face cache folder")
    parser.add_argument("--allow-unpinned", action="store_true", help="accept a branch name as revision")
    parser.set_defaults(bases_func=_pull)


def _add_push(subparsers) -> None:
    parser = subparsers.add_parser("push", help="verify, then upload an artifact folder as a Hub dataset repo")
    parser.add_argument("path", metavar="DIR")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    parser.add_argument("--private", action="store_true")
    parser.set_defaults(bases_func=_push)


def _add_build(subparsers) -> None:
    parser = subparsers.add_parser(
        "build", help="compute the heads' TextSpan and the neurons' statistics into one bases artifact",
        description="Run the heads (TextSpan) and neurons (second-order statistics, PCs, sparse decompositions) "
        "precomputations on one image set and text pool, into one artifact. Resumable: run the same command "
        "again after an interruption.")
    add_model_argument(parser)
    parser.add_argument("--images", required=True,
                        help="image folder, or world:N[:SEED] for N held-out generated world scenes")
    parser.add_argument("--texts", required=True, help="text pool file (one text per line), or 'toy'")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--layers", type=int, nargs="+", help="TextSpan: heads of these layers (default: last 4)")
    parser.add_argument("--per-head", type=int, default=20, help="TextSpan texts per head (default 20)")
    parser.add_argument("--rank", type=int, default=None, help="TextSpan span rank (default 80, capped by d_out)")
    parser.add_argument("--neuron-layers", type=int, nargs="+",
                        help="MLP layers for neuron bases (default: the 3 layers before the last, as the paper's 8-10)")
    parser.add_argument("--k", type=int, default=100, help="top images per neuron (default 100)")
    parser.add_argument("--terms", type=int, default=None, help="texts per neuron (default 128, at most d_out/4)")
    parser.add_argument("--dictionary", default="normalise_texts", choices=("normalise_texts", "original"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true", help="replace bases of another build in --out")
    parser.set_defaults(bases_func=_build)


SUBCOMMANDS = [_add_build, _add_verify, _add_info, _add_pull, _add_push]


def register(subparsers) -> None:
    parser = subparsers.add_parser("bases", help="precomputed bases: verify, info, pull, push",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_subparsers(dest="bases_command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(group)
    parser.set_defaults(func=run, bases_parser=parser)


def run(args) -> int:
    if not getattr(args, "bases_func", None):
        args.bases_parser.print_help()
        return 2
    return args.bases_func(args)


def _verify(args) -> int:
    from core.artifacts import store as bases

    problems = bases.verify_artifact(args.path)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise BasesError(f"{args.path} failed verification ({len(problems)} problem(s)):\n{listed}")
    artifact = bases.Artifact(Path(args.path), bases.read_manifest(args.path))  # just verified
    print(f"ok: {args.path}\n{_summary(artifact)}")
    return 0


def _info(args) -> int:
    from core.artifacts import store as bases

    artifact = bases.load_artifact(args.source, allow_unpinned=args.allow_unpinned)
    print(f"{artifact.path}\n{_summary(artifact)}")
    return 0


def _pull(args) -> int:
    from core.artifacts import hub, store as bases

    folder = hub.pull_artifact(args.repo_id, args.revision, cache_dir=args.cache_dir,
                               allow_unpinned=args.allow_unpinned)
    artifact = bases.load_artifact(folder)
    print(f"{folder}\n{_summary(artifact)}")
    return 0


def _push(args) -> int:
    from core.artifacts import hub

    commit = hub.push_artifact(args.path, args.repo_id, private=args.private)
    print(f"pushed {args.path} to dataset repo {args.repo_id}, commit {commit}\n"
          f"load with: {args.repo_id}@{commit}")
    return 0


def _summary(artifact: Artifact) -> str:
    manifest = artifact.manifest
    model, pool, images = manifest["model"], manifest.get("text_pool"), manifest.get("image_set")
    total = sum(record["bytes"] for record in manifest["files"].values())
    lines = [f"model: {model['spec']} (pretrained {model['pretrained']}, random init {model['random_init']}, "
             f"weights sha256 {str(model['weights_sha256'])[:12]})",
             f"text pool: {pool['name']} ({pool['count']} texts)" if pool else "text pool: none",
             f"image set: {images['description']} ({images['count']} images)" if images else "image set: none",
             f"convention: {manifest['convention']}; algorithms: {', '.join(manifest['algorithms']) or 'none'}",
             f"built {manifest['created']} by clipscope {manifest['project_version']}, schema "
             f"{manifest['schema_version']}; {len(manifest['files'])} files, {total / 1e6:.2f} MB"]
    lines += [f"{section}: {', '.join(names)}" for section in ("tensors", "tables", "extra")
              if (names := artifact.names(section))]
    lines += [f"metric {name}: {value:.6g}" for name, value in manifest.get("metrics", {}).items()]
    return "\n".join(lines)


def _build(args: argparse.Namespace) -> int:
    import sys

    from core.artifacts.store import ArtifactWriter, text_pool_identity
    from core.cli.common import load_model
    from core.cli.neurons import _progress, _texts
    from core.heads.outputs import default_heads, heads_of_layers
    from core.neurons.bases import BuildOptions, neuron_build_params, write_neuron_groups
    from core.neurons.texts import default_terms
    from core.heads.bases import build_textspan_bases, finish_textspan_bases, textspan_build_params

    bundle = load_model(args)
    info = bundle.info
    texts, pool_name, problems = _texts(args.texts)
    if problems:
        print(f"text pool {pool_name}: {len(problems)} lines skipped (e.g. {problems[0]})", file=sys.stderr)
    image_set, paths = _build_images(args.images)
    heads = heads_of_layers(info, args.layers) if args.layers else default_heads(info)
    neuron_layers = args.neuron_layers or list(range(max(0, info.n_layers - 4), info.n_layers - 1))
    rank = args.rank if args.rank is not None else min(80, info.d_out, len(paths))
    options = BuildOptions(k=args.k, n_terms=args.terms, dictionary=args.dictionary, batch_size=args.batch_size)
    n_terms = options.n_terms or default_terms(len(texts), info.d_out)
    algorithms = {"textspan": textspan_build_params(args.per_head, rank, "std", "data"),
                  "neurons": neuron_build_params(neuron_layers, n_terms, options, None)}
    writer = ArtifactWriter(args.out, model=info.identity(), text_pool=text_pool_identity(texts, pool_name),
                            image_set=image_set.identity(), convention="paper", algorithms=algorithms,
                            overwrite=args.overwrite)
    print(f"bases for {info.display_name} on {bundle.device}: heads {len(heads)}, neuron layers {neuron_layers}, "
          f"{image_set.description}, text pool {pool_name} ({len(texts)})", file=sys.stderr)
    build = build_textspan_bases(bundle, paths, texts, heads, args.out, pool_name=pool_name,
                                 image_description=image_set.description, per_head=args.per_head, rank=rank,
                                 batch_size=args.batch_size, progress=_progress, writer=writer)
    metrics = write_neuron_groups(bundle, writer, layers=neuron_layers, image_set=image_set, texts=texts,
                                  n_terms=n_terms, options=options, progress=_progress,
                                  log=lambda line: print(line, file=sys.stderr))
    path = finish_textspan_bases(build, extra_metrics=metrics)
    print(f"wrote {path} ({sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 1e6:.1f} MB); "
          f"check it with: python -m core bases verify {path}")
    return 0


def _build_images(value: str):
    """(ImageSet, file paths): world scenes are rendered once into the cache so TextSpan can read them."""
    from core.errors import ConfigError
    from core.engine.images import image_files
    from core.neurons.bases import ImageSet
    from core.engine.text import cache_dir
    from core.world.scenes import write_scenes

    if not value.startswith("world:"):
        image_set = ImageSet.folder(value)
        return image_set, [Path(image_set.params["root"]) / name for name in image_set.params["files"]]
    try:
        n, *rest = (int(part) for part in value.split(":")[1:])
    except ValueError as err:
        raise ConfigError(f"--images world:N[:SEED] needs integers, got {value!r}") from err
    seed = rest[0] if rest else 0
    image_set = ImageSet.world(n, seed=seed, split="heldout")
    folder = cache_dir() / "world-scenes" / f"heldout-n{n}-seed{seed}-v{image_set.params['world_version']}"
    if not (folder / "labels.csv").is_file():
        write_scenes(folder, n, seed, split="heldout", overwrite=True)
    return image_set, image_files(folder / "images")
