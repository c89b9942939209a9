"""Deploy one tab as its own Hugging Face Space: the tab's folder at the root, plus core/.

    python spaces/deploy.py decomposition ORG/NAME            # upload (needs a token)
    python spaces/deploy.py decomposition --stage /tmp/space  # only assemble the folder locally

The repository keeps a single copy of core/; each Space gets its own at deploy time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.step*.safetensors", "*.tmp")


def stage(tab: str, out: Path) -> Path:
    """Assemble the Space's files in `out` (must be new or empty)."""
    source = ROOT / "spaces" / tab
    if not (source / "app.py").is_file():
        raise SystemExit(f"no tab named {tab!r}: expected {source / 'app.py'}")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; choose a new folder")
    shutil.copytree(source, out, ignore=SKIP, dirs_exist_ok=True)
    shutil.copytree(ROOT / "core", out / "core", ignore=SKIP)
    if not (out / "requirements.txt").exists():
        # Spaces manage gradio themselves (sdk_version); everything else comes from the root pins.
        lines = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if not l.startswith(("gradio", "#"))]
        (out / "requirements.txt").write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tab", help="folder name under spaces/, e.g. decomposition")
    parser.add_argument("repo_id", nargs="?", help="the Space, ORG/NAME")
    parser.add_argument("--stage", type=Path, help="only write the Space's files to this folder")
    args = parser.parse_args(argv)
    if args.stage:
        print(f"staged {args.tab} in {stage(args.tab, args.stage)}")
        return 0
    if not args.repo_id:
        parser.error("give a repo id (ORG/NAME) or --stage DIR")
    import tempfile

    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = stage(args.tab, Path(tmp) / "space")
        api = HfApi()
        api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=args.repo_id, repo_type="space")
    print(f"deployed {args.tab} to https://huggingface.co/spaces/{args.repo_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
