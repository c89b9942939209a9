"""`python -m core second-order`: every neuron's second-order effect on one image, as safetensors."""

from __future__ import annotations

from core.cli.common import add_model_argument, load_model


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "second-order", help="write phi [neurons, d_out] of one MLP layer for one image (safetensors)",
        description="Second-order effects of every neuron of MLP LAYER on IMAGE, through every later attention "
        "head (frozen ln_1 statistics and attention patterns), in the paper's convention: x100 and divided by the "
        "embedding norm |y|. Writes tensor 'phi' [neurons, d_out] with the model, layer and convention as metadata.")
    add_model_argument(parser)
    parser.add_argument("--layer", type=int, required=True, help="MLP layer (must have later attention layers)")
    parser.add_argument("--image", required=True, help="path to an image file")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--mode", default="paper", choices=("paper", "linear"),
                        help="paper: with the bias and LayerNorm-mean shares (default); linear: LN-scaled linear part")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out file that an earlier "
                        "`second-order` wrote (other files are never replaced)")
    parser.set_defaults(func=run)


KIND = "clipscope-second-order"  # in the file's metadata: the only files --overwrite replaces


def _check_out(value: str, overwrite: bool):
    from pathlib import Path

    from core import guards
    from core.errors import ConfigError, OutputError

    path = guards.check_output_path(value, "output file --out", folder=False)
    if path.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors, got {path}")
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise ConfigError(f"{path} exists and is not a file")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; choose another --out or pass --overwrite to replace it")
    if path.exists() and not _ours(path):
        raise OutputError(f"{path} was not written by `python -m core second-order`; it is never replaced: "
                          "choose another --out")
    return Path(path)


def _ours(path) -> bool:
    """True for a file this command wrote: its safetensors metadata names it (older files: their fields)."""
    from safetensors import safe_open

    if path.is_symlink():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # not a safetensors file
        return False
    return metadata.get("kind") == KIND or {"model", "layer", "mode", "coefficient", "convention"} <= set(metadata)


def run(args) -> int:
    from safetensors.torch import save_file

    from core.errors import OutputError
    from core.writes import replace_file

    from core.cli.common import existing_file, model_spec, positive
    from core.engine.images import load_image
    from core.neurons.texts import image_effects
    from core.neurons.second_order import COEFFICIENT, check_layer

    positive(args.layer, "--layer", minimum=0)
    out = _check_out(args.out, args.overwrite)
    model_spec(args)
    image = load_image(existing_file(args.image, "image file", hint="upload an image"))
    bundle = load_model(args)
    check_layer(bundle.model.visual, args.layer)
    phi, _ = image_effects(bundle.model.visual, args.layer, bundle.preprocess(image)[None], mode=args.mode)
    info = bundle.info
    metadata = {"kind": KIND, "model": info.spec, "arch": info.arch, "pretrained": str(info.identity()["pretrained"]),
                "weights_sha256": str(info.weights_sha256), "random_init": str(info.random_init),
                "layer": str(args.layer), "mode": args.mode, "coefficient": str(COEFFICIENT),
                "convention": f"{args.mode}: phi_n = {COEFFICIENT:g} / |y| x (path of neuron n through every later "
                "head, frozen ln_1 stats and attention)" + (", with bias and LayerNorm-mean shares" if args.mode == "paper" else ""),
                "shape": "[neuron, d_out]", "device": str(bundle.device),
                "image": str(args.image).encode("utf-8", "backslashreplace").decode("utf-8")}
    tensors = {"phi": phi[0].contiguous().cpu()}
    try:  # only a file this command wrote (its metadata says so) is replaced, never through a link, atomically
        replace_file(out, lambda tmp: save_file(tensors, tmp, metadata=metadata), ours=_ours, overwrite=args.overwrite,
                     what="output file --out", command="python -m core second-order")
    except Exception as err:  # safetensors reports a failed write as SafetensorError, not OSError
        if isinstance(err, OSError) and not isinstance(err, OutputError) or type(err).__name__ == "SafetensorError":
            raise OutputError(f"cannot write {out}: {str(err).splitlines()[0] if str(err) else err}") from None
        raise
    print(f"wrote {out}: phi [{phi.shape[1]} neurons, {phi.shape[2]} d_out] of layer {args.layer}, model "
          f"{info.spec} on {bundle.device}, convention {args.mode} (x{COEFFICIENT:g}, divided by |y|)")
    return 0
