"""`python -m core segment`: one image's zero-shot segmentation for a few texts (maps, masks, overlays)."""

from __future__ import annotations

import argparse

from core.cli.common import add_model_argument, model_line, print_json

METHOD_CHOICES = "heads|neurons|random-neurons|raw-attention|rollout|gradcam|chefer"
EPILOG = """examples:
  python -m core segment --image scene.png --text "a red circle" --text "a blue square" --out seg/
  python -m core segment --image cat.jpg --text "a cat" --method neurons --model ViT-B-32/openai --out seg/

Writes, per text k, NN_<text>_map.npy (float32 [H, W] in [0, 1] over the model's view: shortest side
resized to the input size, centre crop), NN_<text>_map.png (heat map with colour scale), NN_<text>_mask.png
(0/255), NN_<text>_overlay.png; with several texts labels.npy / labels.png (the argmax view, -1 = background);
and segment.json (what produced them)."""


def add_yes_no(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    parser.add_argument(flag, choices=("yes", "no"), default=None, help=help)


def yes_no(value: str | None) -> bool | None:
    return None if value is None else value == "yes"


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """Options of the methods, shared by `segment` and `segeval`."""
    group = parser.add_argument_group("method options")
    group.add_argument("--heads", default=None,
                       help="heads: sum only these heads, LAYER.HEAD pairs (e.g. 10.3,11.0); default all")
    group.add_argument("--convention", default="paper", choices=("paper", "centered"),
                       help="heads: how the final LayerNorm's mean and bias are shared (default paper)")
    group.add_argument("--neuron-layers", type=int, nargs="+", default=None,
                       help="neurons: candidate layers (default: every layer of the bases; paper: 8 9 10 of ViT-B-32)")
    group.add_argument("--top-k", type=int, default=200, help="neurons: neurons per class (default 200, the paper's)")
    group.add_argument("--sign-weight", action="store_true",
                       help="neurons: weight each activation map by the sign of <PC, text> (paper: plain mean)")
    group.add_argument("--random", action="store_true",
                       help="neurons: random neurons instead of the top ones (the paper's baseline)")
    group.add_argument("--seed", type=int, default=0, help="random neurons: seed (default 0)")
    group.add_argument("--bases", default=None,
                       help="neurons: bases folder or ORG/NAME@SHA (default: $CLIPSCOPE_BASES, then the shipped ones)")
    group.add_argument("--rollout-start", type=int, default=1,
                       help="rollout: first block (default 1, as Chefer et al.'s evaluation; 0 = Abnar & Zuidema)")
    group.add_argument("--chefer-start", type=int, default=-1,
                       help="chefer: first block (default -1 = the last block only, their CLIP notebook)")


def check_method_inputs(args) -> None:
    """Everything about the method options that can be checked before the model loads."""
    from core.artifacts.hub import check_user_source
    from core.cli.common import count, positive
    from core.errors import ConfigError

    count(args.top_k, "top", "--top-k")
    positive(args.seed, "--seed", minimum=0)
    for layer in args.neuron_layers or ():
        positive(layer, "--neuron-layers", minimum=0)
    if args.heads is not None and not args.heads.strip():
        raise ConfigError("--heads is empty; list heads as layer.head (e.g. 10.3,11.0) or give 'all'")
    if args.bases is not None:
        check_user_source(args.bases)


def check_device(args) -> None:
    from core import settings
    from core.errors import ConfigError

    if args.device is not None and not args.device.strip():
        raise ConfigError("--device is empty: choose auto, cpu, cuda or cuda:N")
    settings.resolve_device(args.device)


def load_on_device(args, spec: str):
    """The model `spec` (already allowed by core.guards) on --device."""
    from core import settings
    from core.engine.models import load_clip

    return load_clip(spec, device=settings.resolve_device(args.device))


def method_options(args, bundle):
    from core.segmentation.methods import MethodOptions, parse_heads

    return MethodOptions(heads=parse_heads(args.heads, bundle.info.n_layers, bundle.info.n_heads),
                         convention=args.convention,
                         neuron_layers=tuple(args.neuron_layers) if args.neuron_layers else None, top_k=args.top_k,
                         sign_weight=args.sign_weight, seed=args.seed, bases=args.bases,
                         rollout_start=args.rollout_start, chefer_start=args.chefer_start)


def resolve_method(name: str, random: bool) -> str:
    from core.errors import ConfigError
    from core.segmentation.methods import check_method

    check_method(name)
    if random:
        if name not in ("neurons", "random-neurons"):
            raise ConfigError(f"--random picks random neurons; it does not apply to {name}")
        return "random-neurons"
    return name


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="zero-shot segmentation of one image for one or more texts",
        description="Score every pixel of IMAGE for each TEXT with a segmentation method, and write the maps, masks, "
        "overlays and (for several texts) the argmax view.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--image", required=True, help="path to an image file")
    parser.add_argument("--text", required=True, action="append", help="a class text (repeat for several, at most 16)")
    parser.add_argument("--method", default="heads", help=f"{METHOD_CHOICES} (default heads)")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or one this command wrote before: "
                        "then only the files its manifest lists, unchanged, are replaced)")
    parser.add_argument("--background", default=None,
                        help="a background text for the argmax view: pixels it wins are background")
    parser.add_argument("--threshold", default=None,
                        help="foreground rule: 'mean' (S > mean(S)) or a number in [0, 1]; default: the method's")
    add_yes_no(parser, "--clamp", "clamp scores at 0 before min-max (default: the method's rule; heads: yes)")
    add_yes_no(parser, "--subtract-mean", "heads: subtract the mean over the texts (default: yes with several texts)")
    add_method_options(parser)
    parser.add_argument("--json", action="store_true", help="print segment.json's content")
    parser.set_defaults(func=run)


def slug(text: str, limit: int = 40) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    while "__" in cleaned:
        cleaned = cleaned.replace("__", "_")
    return cleaned[:limit] or "text"


def _targets(texts: list[str], several: bool) -> list[str]:
    """The files one run writes in --out (besides its manifest)."""
    files = [f"{index:02d}_{slug(text)}_{kind}" for index, text in enumerate(texts)
             for kind in ("map.npy", "map.png", "mask.png", "overlay.png")]
    return files + (["labels.npy", "labels.png"] if several else []) + ["segment.json"]


def run(args) -> int:
    import json
    import shlex
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from core import guards
    from core.cli.common import existing_file, model_spec
    from core.engine.images import load_image
    from core.engine.text import check_texts as check_text_values
    from core.messages import display_source
    from core.segmentation.pictures import heat_picture, label_picture, mask_picture
    from core.segmentation.protocols import parse_threshold
    from core.segmentation.segment import check_texts, segment_image
    from core.writes import OutputFolder

    check_text_values(args.text, what="--text")
    if args.background is not None:
        check_text_values([args.background], what="--background")
    texts = check_texts(args.text + ([args.background] if args.background else []))
    method = resolve_method(args.method, args.random)
    threshold = parse_threshold(args.threshold)
    check_method_inputs(args)
    check_device(args)
    spec = model_spec(args)
    image_path = existing_file(args.image, "image file", hint="upload an image")
    out = Path(guards.check_output_path(args.out, "--out folder"))
    # --out: new, empty, or an earlier `segment` run's (its manifest lists what it wrote, with hashes): only those
    # files are replaced or removed, and any other file where one would go is refused now, before any work.
    folder = OutputFolder(out, "segment", require="ours", what="--out folder")
    targets = _targets(texts, len(texts) > 1)
    folder.check_targets(targets)
    image = load_image(image_path)
    bundle = load_on_device(args, spec)
    options = method_options(args, bundle)
    result = segment_image(bundle, image, texts, method=method, options=options, threshold=threshold,
                           clamp=yes_no(args.clamp), subtract_mean=yes_no(args.subtract_mean))
    if folder.earlier:
        print(f"replacing the results of an earlier `segment` run in {out}", file=sys.stderr)
    folder.claim(targets)
    masks = result.masks()
    for index, text in enumerate(result.texts):
        stem = f"{index:02d}_{slug(text)}"
        folder.write_array(f"{stem}_map.npy", result.maps[index], save=False)
        folder.write_image(f"{stem}_map.png", heat_picture(result.view, result.maps[index], title=f"{method}: {text}"),
                           save=False)
        folder.write_image(f"{stem}_mask.png", Image.fromarray(masks[index].astype(np.uint8) * 255), save=False)
        folder.write_image(f"{stem}_overlay.png", mask_picture(result.view, masks[index], title=f"{text}"), save=False)
    background = len(texts) - 1 if args.background else None
    if len(texts) > 1:
        labels = result.labels(background=background)
        folder.write_array("labels.npy", labels.astype(np.int16), save=False)
        folder.write_image("labels.png", label_picture(result.view, labels, result.texts, title=f"{method}: argmax"),
                           save=False)
    files = [name for name in targets if name != "segment.json"]
    record_options = options.record(method)
    if record_options.get("bases"):
        record_options["bases"] = display_source(record_options["bases"])
    record = {**result.settings(), "image": str(image_path), "background_text": args.background,
              "options": record_options, "files": files,
              "command": "python -m core segment " + " ".join(shlex.quote(a) for a in sys.argv[2:])
              if len(sys.argv) > 2 and sys.argv[1] == "segment" else None}
    folder.write_text("segment.json", json.dumps(record, indent=2), save=False)
    folder.remove_stale(targets)  # an earlier run's other files (other texts), if unchanged; saves the manifest
    if args.json:
        print_json(record)
        return 0
    print(model_line(bundle))
    print(f"method: {result.description}\nthreshold: {result.threshold}; clamp: {'yes' if result.clamp else 'no'}; "
          f"heads minus mean over texts: {'yes' if result.subtract_mean else 'no'}")
    if result.text_free:
        print(f"note: {method} does not depend on the text; every text gets the same map")
    for index, text in enumerate(result.texts):
        print(f"  {text!r}: cos {result.cosine[index]:+.4f}, foreground {100 * masks[index].mean():.1f}% of the view")
    print(f"wrote {len(files)} files and segment.json to {out}")
    return 0
