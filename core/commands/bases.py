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

from core.errors import BasesError

if TYPE_CHECKING:
    from core.bases import Artifact

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


SUBCOMMANDS = [_add_verify, _add_info, _add_pull, _add_push]


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
    from core import bases

    problems = bases.verify_artifact(args.path)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise BasesError(f"{args.path} failed verification ({len(problems)} problem(s)):\n{listed}")
    artifact = bases.Artifact(Path(args.path), bases.read_manifest(args.path))  # just verified
    print(f"ok: {args.path}\n{_summary(artifact)}")
    return 0


def _info(args) -> int:
    from core import bases

    artifact = bases.load_artifact(args.source, allow_unpinned=args.allow_unpinned)
    print(f"{artifact.path}\n{_summary(artifact)}")
    return 0


def _pull(args) -> int:
    from core import bases, hub

    folder = hub.pull_artifact(args.repo_id, args.revision, cache_dir=args.cache_dir,
                               allow_unpinned=args.allow_unpinned)
    artifact = bases.load_artifact(folder)
    print(f"{folder}\n{_summary(artifact)}")
    return 0


def _push(args) -> int:
    from core import hub

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
