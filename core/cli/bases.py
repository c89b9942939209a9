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
  python -m core bases build --model toy --images world:2000:1 --texts toy --out out/toy-bases
  torchrun --nproc_per_node 2 -m core bases build --model ViT-B-16/openai \\
      --images hf:ORG/imagenet-val@<commit sha>:validation --texts texts.txt --out out/b16-bases
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
        "again after an interruption. Scales out with torchrun: torchrun --nproc_per_node N -m core bases build ... "
        "gives the same artifact as one process.")
    add_model_argument(parser)  # with --device; under torchrun each process takes GPU LOCAL_RANK
    parser.add_argument("--images", required=True,
                        help="image folder, world:N[:SEED] for N held-out generated world scenes, or a Hugging Face "
                        "dataset hf:ORG/NAME@REVISION:SPLIT[:COLUMN] (hf:PATH:SPLIT for one saved locally)")
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
    parser.add_argument("--circuits", action="store_true",
                        help="also store every neuron's weight edges to the later heads (the Circuits tab reads them)")
    parser.add_argument("--overwrite", action="store_true", help="replace bases of another build in --out")
    parser.add_argument("--shard-size", type=int, default=None, metavar="N",
                        help="images per shard, the unit of work and resume (default 2048, a multiple of --batch-size)")
    parser.add_argument("--work-dir", default=None, metavar="DIR",
                        help="where finished shards are kept until the artifact is written (default: the clipscope "
                        "cache; use a shared folder for multi-node runs that may restart on other nodes). The build "
                        "writes into a sub-folder of it and afterwards removes only the files it wrote there; the "
                        "folder and anything else in it are kept")
    parser.add_argument("--loader-threads", type=int, default=None, metavar="N",
                        help="threads decoding images per process (default 4 on a GPU, 0 on the CPU)")
    parser.add_argument("--timeout", type=float, default=1800, metavar="S",
                        help="seconds a process waits for the others before giving up (default 1800)")
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
        from core.cli import require_subcommand

        require_subcommand(args.bases_parser)
    return args.bases_func(args)


def _verify(args) -> int:
    from core import guards
    from core.artifacts import store as bases

    guards.check_user_path(args.path, "bases folder")
    problems = bases.verify_artifact(args.path, deep=True)
    if problems:  # the first problem on the error line, any others listed below it
        more = "".join(f"\n  - {problem}" for problem in problems[1:])
        count = f" ({len(problems)} problems)" if len(problems) > 1 else ""
        raise BasesError(f"{args.path} failed verification{count}: {problems[0]}{more}")
    artifact = bases.Artifact(Path(args.path), bases.read_manifest(args.path))  # just verified
    print(f"ok: {args.path}\n{_summary(artifact)}")
    return 0


def _info(args) -> int:
    from core.artifacts import hub

    from core.artifacts.store import verify_artifact

    artifact = hub.load_bases(hub.check_user_source(args.source), allow_unpinned=args.allow_unpinned)
    problems = verify_artifact(artifact.path, within=artifact.root, deep=True)  # contents too: NaN, bad tables
    if problems:
        raise BasesError(f"cannot use the bases at {artifact.path}: " + "; ".join(problems))
    print(f"{artifact.path}\n{_summary(artifact)}")
    return 0


def _pull(args) -> int:
    from core import guards
    from core.artifacts import hub

    if args.cache_dir is not None:
        guards.check_user_path(args.cache_dir, "cache folder --cache-dir")
    folder = hub.pull_artifact(args.repo_id, args.revision, cache_dir=args.cache_dir,
                               allow_unpinned=args.allow_unpinned)
    artifact = hub.load_bases(folder)
    print(f"{folder}\n{_summary(artifact)}")
    return 0


def _push(args) -> int:
    from core import guards
    from core.artifacts import hub

    guards.check_user_path(args.path, "bases folder")
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

    from core import guards
    from core.cli.common import count, model_spec, parse_images, positive
    from core.cli.neurons import _progress, _texts
    from core.distributed import runtime as rt
    from core.distributed.bases import BasesPlan, build_bases
    from core.engine.models import load_clip
    from core.heads.outputs import default_heads, heads_of_layers
    from core.neurons.bases import BuildOptions
    from core.neurons.texts import default_terms

    count(args.batch_size, "batch_size", "--batch-size")
    count(args.per_head, "texts", "--per-head")
    count(args.rank, "texts", "--rank")
    count(args.k, "gallery", "--k")
    count(args.terms, "texts", "--terms")
    positive(args.shard_size, "--shard-size")
    positive(args.loader_threads, "--loader-threads", minimum=0, maximum=64)
    for layer in (args.layers or []) + (args.neuron_layers or []):
        positive(layer, "--layers/--neuron-layers", minimum=0)
    guards.check_output_path(args.out, "output folder --out")
    if args.work_dir:
        guards.check_output_path(args.work_dir, "work folder --work-dir")
    spec = model_spec(args)
    runtime = rt.start(args.device, timeout_s=args.timeout)
    try:
        main = runtime.is_main
        bundle = load_clip(spec, device=runtime.device)
        info = bundle.info
        texts, pool_name, problems = _texts(args.texts)
        if problems and main:
            print(f"text pool {pool_name}: {len(problems)} lines skipped (e.g. {problems[0]})", file=sys.stderr)
        image_set = parse_images(args.images, generator_split="heldout")
        heads = heads_of_layers(info, args.layers) if args.layers else default_heads(info)
        neuron_layers = args.neuron_layers or list(range(max(0, info.n_layers - 4), info.n_layers - 1))
        rank = args.rank if args.rank is not None else min(80, info.d_out, image_set.count)
        options = BuildOptions(k=args.k, n_terms=args.terms, dictionary=args.dictionary, batch_size=args.batch_size)
        n_terms = options.n_terms or default_terms(len(texts), info.d_out)
        plan = BasesPlan(heads=heads, neuron_layers=neuron_layers, per_head=args.per_head, rank=rank,
                         n_terms=n_terms, options=options, shard_size=args.shard_size or _shard_size(args.batch_size),
                         loader_threads=args.loader_threads if args.loader_threads is not None
                         else 4 if runtime.device.type == "cuda" else 0, circuits=args.circuits)
        log = (lambda line: print(line, file=sys.stderr)) if main else (lambda _: None)
        log(f"bases for {info.display_name}: heads {len(heads)}, neuron layers {neuron_layers}, "
            f"{image_set.description}, text pool {pool_name} ({len(texts)})")
        report = build_bases(bundle, image_set, texts, args.out, plan, pool_name=pool_name, runtime=runtime,
                             work_dir=args.work_dir, overwrite=args.overwrite, progress=_progress if main else None,
                             log=log)
    finally:
        rt.stop(runtime)
    resumed = sum(report.resumed.values())
    if resumed:
        log(f"{resumed} shard pass(es) read back from an earlier run: {report.resumed}")
    if main:
        path = report.path
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
        print(f"wrote {path} ({size:.1f} MB; {report.images} images in {report.shards} shards, "
              f"{report.world_size} process(es)); check it with: python -m core bases verify {path}")
    return 0


def _shard_size(batch_size: int) -> int:
    from core.distributed.bases import DEFAULT_SHARD_SIZE

    return max(batch_size, DEFAULT_SHARD_SIZE // batch_size * batch_size)
