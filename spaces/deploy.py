"""Deploy one tab, or the whole suite, as a Hugging Face Space: its files plus core/, and a README front-matter.

    python spaces/deploy.py heads ORG/NAME                                 # upload (needs a token)
    python spaces/deploy.py heads --stage /tmp/space                       # only assemble the folder locally
    python spaces/deploy.py suite --stage /tmp/space --model ViT-B-16/laion2b_s34b_b88k \\
        --model-revision <sha> --bases ORG/clip-bases@<sha>                # a real CLIP, ZeroGPU
    python spaces/deploy.py --write-cards                                  # refresh spaces/*/README.md

The repository keeps a single copy of core/; each Space gets its own at deploy time. The front-matter follows the
Spaces configuration reference: consistent titles, `short_description` of at most 60 characters, the weights
(`models`) and bases (`datasets`) the Space reads, `preload_from_hub` for the weights at a pinned revision,
`suggested_hardware`, tags, and the papers' arXiv links in the card's text (which is what links a Space to its papers).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SKIP_NAMES = ("__pycache__", "*.pyc", "*.step*.safetensors", "*.tmp")
SKIP = shutil.ignore_patterns(*SKIP_NAMES)
SHA = re.compile(r"[0-9a-f]{40}")
PAPERS = {
    "2310.05916": "Interpreting CLIP's Image Representation via Text-Based Decomposition (ICLR 2024)",
    "2406.04341": "Interpreting the Second-Order Effects of Neurons in CLIP (ICLR 2025)",
}
# ZeroGPU runs torch 2.8 to 2.11 only (huggingface.co/docs/hub/spaces-zerogpu); the root pins are newer, so a
# ZeroGPU Space gets these (the CPU test suite passes under them: docs/deploy.md, "ZeroGPU").
ZEROGPU_PINS = {"torch": "2.11.0", "torchvision": "0.26.0"}
TAGS = ["interpretability", "clip", "vision-transformer", "explainability", "mechanistic-interpretability"]


class Card(NamedTuple):  # not a dataclass: tests load this file by path, outside sys.modules
    title: str
    emoji: str
    colour_from: str
    colour_to: str
    short_description: str  # at most 60 characters (the Hub refuses longer)
    papers: tuple[str, ...]
    tags: tuple[str, ...]


CARDS = {
    "decomposition": Card("clipscope · Decomposition", "🔬", "indigo", "red",
                          "Split CLIP's image-text similarity into heads", ("2310.05916",), ("text-based-decomposition",)),
    "heads": Card("clipscope · Heads", "🔎", "indigo", "pink", "What CLIP's attention heads do, in words",
                  ("2310.05916",), ("textspan", "attention-heads")),
    "neurons": Card("clipscope · Neurons", "🧠", "purple", "yellow", "What CLIP's MLP neurons write, in words",
                    ("2406.04341",), ("second-order-effects", "neurons")),
    "segmentation": Card("clipscope · Segmentation", "🧩", "indigo", "green",
                         "Zero-shot segmentation by CLIP's heads and neurons", ("2310.05916", "2406.04341"),
                         ("zero-shot-segmentation", "second-order-effects")),
    "adversarial": Card("clipscope · Adversarial", "🎭", "purple", "red", "Images that fool CLIP, from neurons' words",
                        ("2406.04341",), ("adversarial-images", "second-order-effects", "stable-diffusion")),
    "circuits": Card("clipscope · Circuits", "🕸", "purple", "indigo", "Which heads carry each CLIP neuron's effect",
                     ("2406.04341",), ("second-order-effects", "circuits", "neurons")),
    "suite": Card("clipscope", "🔭", "blue", "purple", "CLIP's heads and neurons explained in words",
                  ("2310.05916", "2406.04341"), ("textspan", "second-order-effects")),
}


def gradio_version() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith("gradio=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit("requirements.txt does not pin gradio")


def model_repo(spec: str) -> tuple[str, str] | None:
    """(Hub model repo, weights file) of an open_clip spec, or None (toy, local files, random weights)."""
    if spec.startswith("hf-hub:"):
        return spec[len("hf-hub:"):], "open_clip_model.safetensors"
    arch, _, tag = spec.partition("/")
    if not tag or tag == "none" or spec == "toy":
        return None
    import open_clip

    hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").strip("/")
    if not hub:
        return None
    repo = "/".join(hub.split("/")[:2])
    return repo, "open_clip_model.safetensors" if "/" not in hub[len(repo):] else hub.split("/", 2)[2]


def front_matter(tab: str, *, model: str = "toy", model_revision: str | None = None, bases: str | None = None,
                 hardware: str | None = None) -> dict:
    """The README YAML of a Space; `bases` is ORG/NAME@SHA, revisions are 40-hex commits."""
    card = CARDS[tab]
    matter = {"title": card.title, "emoji": card.emoji, "colorFrom": card.colour_from, "colorTo": card.colour_to,
              "sdk": "gradio", "sdk_version": gradio_version(), "python_version": "3.12", "app_file": "app.py",
              "short_description": card.short_description, "license": "mit", "pinned": False,
              "tags": list(dict.fromkeys([*TAGS, *card.tags]))}
    preload, models, datasets = [], [], []
    hub = model_repo(model)
    if hub:
        if not (model_revision and SHA.fullmatch(model_revision)):
            raise SystemExit(f"--model-revision must be the 40-hex commit of {hub[0]} (weights are pinned)")
        models.append(hub[0])
        preload.append(f"{hub[0]} {hub[1]} {model_revision}")
    if bases:
        repo, _, revision = bases.partition("@")
        if not SHA.fullmatch(revision):
            raise SystemExit("--bases must be ORG/NAME@<40-hex commit> (bases are pinned)")
        # The configuration reference documents preloading for model repos only ("repo file1,file2 sha"), so
        # the bases are listed, and the app fetches them at their pinned revision on first use (a few MB).
        datasets.append(repo)
    if models:
        matter["models"] = models
    if datasets:
        matter["datasets"] = datasets
    if preload:
        matter["preload_from_hub"] = preload
    matter["suggested_hardware"] = hardware or ("zero-a10g" if hub else "cpu-basic")
    return matter


def card_text(tab: str, matter: dict, body: str) -> str:
    """README.md: the front-matter, the body, and the papers' arXiv links if the body lacks them."""
    import yaml

    missing = [arxiv for arxiv in CARDS[tab].papers if f"arxiv.org/abs/{arxiv}" not in body]
    papers = "".join(f"\n- {PAPERS[a]}: [arXiv:{a}](https://arxiv.org/abs/{a})" for a in missing)
    body = body.rstrip() + (f"\n\n## Papers\n{papers}\n" if missing else "\n")
    yaml_text = yaml.safe_dump(matter, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{yaml_text}---\n\n{body.lstrip()}"


def card_body(tab: str) -> str:
    """The tab's README.md without its front-matter."""
    source = ROOT / ("README.md" if tab == "suite" else f"spaces/{tab}/README.md")
    text = source.read_text(encoding="utf-8")
    if text.startswith("---\n"):
        text = text.split("\n---\n", 1)[1]
    return text


def stage(tab: str, out: Path, **options) -> Path:
    """Assemble the Space's files in `out` (must be new or empty); options go to `front_matter`."""
    if tab not in CARDS:
        raise SystemExit(f"no tab named {tab!r}: choose one of {', '.join(CARDS)}")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; choose a new folder")
    if tab == "suite":
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "app.py", out / "app.py")
        shutil.copytree(ROOT / "spaces", out / "spaces", ignore=shutil.ignore_patterns(*SKIP_NAMES, "deploy.py"))
    else:
        shutil.copytree(ROOT / "spaces" / tab, out, ignore=SKIP, dirs_exist_ok=True)
        shutil.copy2(ROOT / "spaces" / "ui_common.py", out / "ui_common.py")
    shutil.copytree(ROOT / "core", out / "core", ignore=SKIP)
    (out / "README.md").write_text(card_text(tab, front_matter(tab, **options), card_body(tab)), encoding="utf-8")
    # Spaces manage gradio and spaces themselves (sdk_version); everything else comes from the root pins.
    (out / "requirements.txt").write_text(space_requirements(front_matter(tab, **options)["suggested_hardware"]))
    return out


def space_requirements(hardware: str) -> str:
    """The root pins without what Spaces manage themselves (gradio via sdk_version, spaces); on ZeroGPU
    hardware, torch and torchvision at the newest versions ZeroGPU supports."""
    lines = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name = line.split("==", 1)[0].strip()
        if not line.strip() or line.startswith(("gradio", "spaces", "#")):
            continue
        if hardware.startswith("zero-") and name in ZEROGPU_PINS:
            line = f"{name}=={ZEROGPU_PINS[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"



def write_cards() -> list[Path]:
    """Refresh the front-matter of the committed spaces/<tab>/README.md (offline default model)."""
    written = []
    for tab in CARDS:
        if tab == "suite":
            continue
        path = ROOT / "spaces" / tab / "README.md"
        path.write_text(card_text(tab, front_matter(tab), card_body(tab)), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tab", nargs="?", help=f"one of {', '.join(CARDS)}")
    parser.add_argument("repo_id", nargs="?", help="the Space, ORG/NAME")
    parser.add_argument("--stage", type=Path, help="only write the Space's files to this folder")
    parser.add_argument("--model", default="toy", help="the Space's default model (CLIPSCOPE_MODEL), default toy")
    parser.add_argument("--model-revision", help="40-hex commit of the model's Hub repo (preloaded, pinned)")
    parser.add_argument("--bases", help="ORG/NAME@SHA of the bases dataset (pinned; fetched on first use)")
    parser.add_argument("--hardware", help="suggested_hardware (default: zero-a10g for Hub weights, else cpu-basic)")
    parser.add_argument("--write-cards", action="store_true", help="refresh spaces/*/README.md and exit")
    args = parser.parse_args(argv)
    if args.write_cards:
        for path in write_cards():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    if not args.tab:
        parser.error("name a tab (or --write-cards)")
    options = {"model": args.model, "model_revision": args.model_revision, "bases": args.bases,
               "hardware": args.hardware}
    if args.stage:
        print(f"staged {args.tab} in {stage(args.tab, args.stage, **options)}")
        return 0
    if not args.repo_id:
        parser.error("give a repo id (ORG/NAME) or --stage DIR")
    import tempfile

    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = stage(args.tab, Path(tmp) / "space", **options)
        api = HfApi()
        api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=args.repo_id, repo_type="space")
        if args.model != "toy":
            api.add_space_variable(args.repo_id, "CLIPSCOPE_MODEL", args.model)
        if args.bases:
            api.add_space_variable(args.repo_id, "CLIPSCOPE_BASES", f"{args.model}={args.bases}")
    print(f"deployed {args.tab} to https://huggingface.co/spaces/{args.repo_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
