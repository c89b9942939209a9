"""`python -m core circuit`: which later heads carry a neuron's second-order effect, or which neurons feed a head."""

from __future__ import annotations

import re

from core.cli.common import add_model_argument, load_model, model_line, print_json

EPILOG = """examples:
  python -m core circuit --model toy --layer 1 --neuron 5 --images world:2000:1:heldout          # out-edges
  python -m core circuit --model toy --layer 1 --neuron 5 --weights-only --target "a red circle"
  python -m core circuit --model toy --layer 1 --neuron 5 --images world:2000:1:heldout --ablation
  python -m core circuit --model toy --head 2.1                                                   # in-edges

The shipped toy bases were built on world:2000:1:heldout, so that image set reuses their top images and PCs."""
HEAD = re.compile(r"(?:(\d+)\.(\d+)|L(\d+)H(\d+))")


def register(subparsers) -> None:
    import argparse

    parser = subparsers.add_parser(
        "circuit", help="a neuron's edges to the later heads that carry its second-order effect, or a head's in-edges",
        description="Split a neuron's second-order effect (paper 2) exactly over the later attention heads that carry "
        "it. Weight edges need no images (composition score, and <u, t> against a target); data edges are the "
        "mean of <part of the path, t> over the neuron's active images (its top-k by |phi - mean|, as paper 2). "
        "With --head L.H: the earlier-layer neurons with the strongest weight edges into that head.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--layer", type=int, help="the neuron's MLP layer (with --head: only this source layer)")
    parser.add_argument("--neuron", type=int, help="the neuron (out-edges)")
    parser.add_argument("--head", help="L.H: a head's in-edges instead of a neuron's out-edges")
    parser.add_argument("--images", help="image set for data edges: folder, world:N[:SEED[:SPLIT]] or "
                        "hf:ORG/NAME@REVISION:SPLIT (not needed with --weights-only or --head)")
    parser.add_argument("--target", help="pc (the neuron's first PC; default when available), class:NAME, or a text")
    parser.add_argument("--top", type=int, default=20, help="paths (or neurons) to print (default 20)")
    parser.add_argument("--weights-only", action="store_true", help="weight edges only: no images")
    parser.add_argument("--bases", help="bases folder or ORG/NAME@SHA (default: $CLIPSCOPE_BASES or the shipped ones)")
    parser.add_argument("--k", type=int, default=None, help="active images per neuron (default: the bases' k, or 100)")
    parser.add_argument("--mode", default="paper", choices=("paper", "linear"),
                        help="second-order convention: paper (bias and mean shares) or linear part only")
    parser.add_argument("--ablation", action="store_true", help="also mean-ablate each path: lens vs the real model, "
                        "and the share of the neuron's whole real effect the lens explains")
    parser.add_argument("--mean-images", type=int, default=256,
                        help="with --ablation: the first N images of the set give the per-token mean activations")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def parse_head(value: str) -> tuple[int, int]:
    from core.errors import ConfigError

    match = HEAD.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ConfigError(f"--head must be LAYER.HEAD (e.g. 2.1), got {str(value)[:40]!r}")
    numbers = [int(g) for g in match.groups() if g is not None]
    return numbers[0], numbers[1]


def _artifact(bundle, source):
    """The bases for this model (None when none are configured); a named source that fails is an error."""
    from core.artifacts.hub import load_bases, resolve_bases_source

    resolved = resolve_bases_source(bundle.info.spec, source)
    if resolved is None:
        return None, None
    return load_bases(resolved, expect_model=bundle.info.identity()), resolved


def run(args) -> int:
    from core.artifacts.hub import check_user_source
    from core.cli.common import count, model_spec, parse_images, positive
    from core.cli.segment import check_device
    from core.errors import ConfigError

    count(args.top, "top", "--top")
    count(args.batch_size, "batch_size", "--batch-size")
    count(args.k, "gallery", "--k")
    count(args.mean_images, "scenes", "--mean-images")
    head = parse_head(args.head) if args.head is not None else None
    if head is None and (args.layer is None or args.neuron is None):
        raise ConfigError("give --layer and --neuron (a neuron's out-edges) or --head L.H (a head's in-edges)")
    if head is not None and args.neuron is not None:
        raise ConfigError("--neuron and --head ask for different views: give one of them")
    positive(args.layer, "--layer", minimum=0)
    positive(args.neuron, "--neuron", minimum=0)
    if args.weights_only and (args.images is not None or args.ablation):
        raise ConfigError("--weights-only uses no images: leave out --images and --ablation")
    if head is None and not args.weights_only and args.images is None:
        raise ConfigError("data edges need --images SET (or pass --weights-only)")
    if head is not None and (args.images is not None or args.ablation):
        raise ConfigError("a head's in-edges are weight edges: leave out --images and --ablation")
    if args.bases is not None:
        check_user_source(args.bases)
    check_device(args)
    model_spec(args)
    image_set = parse_images(args.images, generator_split="heldout") if args.images is not None else None
    bundle = load_model(args)
    artifact, source = _artifact(bundle, args.bases)
    if head is not None:
        return _in_edges(args, bundle, head, artifact, source)
    return _out_edges(args, bundle, image_set, artifact, source)


def _out_edges(args, bundle, image_set, artifact, source) -> int:
    from core.circuits.report import neuron_circuit
    from core.cli.neurons import _progress

    circuit = neuron_circuit(bundle, args.layer, args.neuron, image_set=image_set, target=args.target,
                             artifact=artifact, k=args.k, mode=args.mode, batch_size=args.batch_size,
                             ablation=args.ablation, mean_images=args.mean_images, progress=_progress,
                             bases_source=source)
    if args.json:
        result = circuit.as_dict()
        result["paths"] = result["paths"][:args.top]
        print_json(result)
        return 0
    print(model_line(bundle))
    label = f"L{circuit.layer}.n{circuit.neuron}"
    print(f"neuron {label}: {len(circuit.rows)} paths to later heads; convention {circuit.mode} (x100, divided by "
          f"|y|); target: {circuit.target or 'none (composition scores only)'}")
    for key, value in circuit.provenance.items():
        if value:
            print(f"{key}: {value}")
    if circuit.terms:
        print("neuron's terms: " + "; ".join(f"{t} ({w:+.2f})" for t, w in circuit.terms))
    if circuit.data is not None:
        print(f"mean <phi_n, t> over {int(circuit.data.count[0])} active images = {float(circuit.data.total[0]):+.5f} "
              "(= the sum of the data edges)")
    header = f"{'path':>8} {'composition':>11} {'weight':>10} {'data':>10} {'share':>7}  sign         head's texts"
    print(header)
    for row in circuit.rows[:args.top]:
        print(f"{row.name:>8} {row.composition:11.4f} {_number(row.weight):>10} {_number(row.data):>10} "
              f"{_number(row.share, '{:+.3f}'):>7}  {row.sign:12s} {'; '.join(row.head_texts)}")
    if circuit.ablation is not None:
        a = circuit.ablation
        print(f"mean ablation on {a.n_images} images (effect on <y, t> x100/|y|): all paths, lens {a.lens_all:+.5f}; "
              f"all paths, real model {a.real_all:+.5f}; whole neuron, real model {a.neuron_real:+.5f}; the lens "
              f"explains {a.share_explained:.1%} of the neuron's real effect"
              + (" (opposite signs: the lens does not describe this neuron's real effect)"
                 if a.lens_all * a.neuron_real < 0 else ""))
        for i, l2 in enumerate(a.later_layers):
            print("  " + "  ".join(f"L{l2}H{h}: lens {float(a.lens[i, h]):+.5f} real {float(a.real[i, h]):+.5f}"
                                   for h in range(a.lens.shape[1])))
    return 0


def _in_edges(args, bundle, head, artifact, source) -> int:
    from core.circuits.report import head_circuit

    circuit = head_circuit(bundle, head, target=args.target, artifact=artifact,
                           layers=[args.layer] if args.layer is not None else None, top=args.top, bases_source=source)
    if args.json:
        print_json(circuit.as_dict())
        return 0
    print(model_line(bundle))
    print(f"head L{head[0]}H{head[1]}: the {len(circuit.rows)} strongest in-edges from MLP layer(s) "
          f"{circuit.provenance['layers']}, ranked by {circuit.provenance['ranked_by']}; target: "
          f"{circuit.target or 'none'}")
    if circuit.head_texts:
        print("head's texts: " + "; ".join(circuit.head_texts))
    print(f"{'neuron':>10} {'composition':>11} {'weight':>10}  neuron's terms")
    for row in circuit.rows:
        print(f"{'L%d.n%d' % (row.layer, row.neuron):>10} {row.composition:11.4f} {_number(row.signed):>10}  "
              + "; ".join(f"{t} ({w:+.2f})" for t, w in row.terms[:4]))
    return 0


def _number(value, fmt: str = "{:+.5f}") -> str:
    return "-" if value is None else fmt.format(value)
