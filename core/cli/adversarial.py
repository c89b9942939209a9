"""`python -m core adversarial`: semantic adversarial images from neurons' spurious words (paper 2, section 5.1)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  python -m core adversarial --model toy-biased --present square --target triangle --baselines --out adv/
  python -m core adversarial --protocol core/adversarial/protocols/v1.json --model toy-biased --out protocol-v1/
  python -m core adversarial --model ViT-B-32/openai --bases org/b32-bases@<sha> --present dog --target deer \\
      --generator sd --checkpoint stabilityai/sd-turbo --revision <sha> --device cuda --out adv-dog-deer/
The world generator is an offline stand-in for a text-to-image model: it draws generated-world scenes
from the descriptions' words, so it suits the toy models only."""


def register(subparsers) -> None:
    from core.adversarial.defaults import (DEFAULT_NEURONS, DEFAULT_SIMILARITY, DEFAULT_WORDS, PAPER_EMBED_DIMS, SD_REPO,
                                           SD_REVISION, SD_STEPS)
    from core.cli.common import add_model_argument

    parser = subparsers.add_parser(
        "adversarial", help="semantic adversarial images: neurons' spurious words -> descriptions -> images",
        description="Find the neurons whose second-order effect pushes class c1 (--present) towards c2 (--target), "
        "decompose them into words, drop words naming c2 or a synonym, write descriptions of c1 with the top words, "
        "draw them, and count the images the binary CLIP classifier calls c2. Writes images, results.csv "
        "(description, seed, verdict, score), words.csv, neurons.csv and summary.json into --out.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--protocol", metavar="FILE", help="run a versioned protocol file instead (e.g. "
                        "core/adversarial/protocols/v1.json, or its name v1): every planted cue of the model in both "
                        "directions, its seeds, draws and sensitivity settings, with intervals and confusion rates; "
                        "every method option comes from the file (only --model, --bases, --out, --json, "
                        "--protocol-settings apply)")
    parser.add_argument("--protocol-settings", metavar="NAME,...", help="with --protocol: run only these of its "
                        "settings (main and the sensitivity names; default all)")
    parser.add_argument("--present", help="c1, the class the images show (e.g. square)")
    parser.add_argument("--target", help="c2, the class CLIP should be fooled into (e.g. triangle)")
    parser.add_argument("--layers", type=int, nargs="+", help="neuron layers (default: the last three the bases cover)")
    parser.add_argument("--neurons", type=int, default=None,
                        help=f"top neurons (default {DEFAULT_NEURONS}, the paper's, scaled down on embeddings narrower than "
                        f"{PAPER_EMBED_DIMS} dimensions: 19 on the toy models)")
    parser.add_argument("--words", type=int, default=DEFAULT_WORDS, help=f"top words (default {DEFAULT_WORDS})")
    parser.add_argument("--per-pair", action="store_true", help="rank (neuron, word) pairs as the official code "
                        "instead of summing each word's scores over neurons (paper eq. 6)")
    parser.add_argument("--similarity", type=float, default=DEFAULT_SIMILARITY,
                        help=f"drop words whose CLIP text cosine to the target is at least this (default {DEFAULT_SIMILARITY})")
    parser.add_argument("--similarity-model", help="model spec whose text tower judges synonyms (default: the model "
                        "itself; a biased model embeds its spurious words near the class, so an independent one, e.g. "
                        "toy for toy-biased, plays the paper's sentence-transformer)")
    parser.add_argument("--block", default="", help="comma-separated words never to use (whole-word, plurals too)")
    parser.add_argument("--generator", default="world", help="world (offline stand-in, toy models; default) or sd "
                        "(Stable Diffusion through diffusers)")
    parser.add_argument("--unnamed-size", default="large", choices=("large", "small", "random"),
                        help="world: the subject's size when its words name none (default large)")
    parser.add_argument("--word-scope", default="own-object", choices=("own-object", "subject"),
                        help="world: a colour, size or count describes its own object (default) or every word the "
                        "drawn subject (the earlier rule)")
    parser.add_argument("--background-scope", default="scene", choices=("scene", "subject"),
                        help="world: a background word applies to the whole scene (default) or only to its own "
                        "object (ignored when it belongs to another object)")
    parser.add_argument("--images", type=int, default=100, help="images per repeat and method (default 100)")
    parser.add_argument("--descriptions", type=int, default=10, help="descriptions per repeat and method; the images "
                        "are spread over them (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats with different seeds (default 3)")
    parser.add_argument("--baselines", action="store_true", help="also run the random-neuron and similar-words baselines")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--templates", default="auto", help="the binary classifier's templates: auto (default), "
                        "openai, simple or bare")
    parser.add_argument("--bases", help="neuron bases folder or ORG/NAME@SHA (default: $CLIPSCOPE_BASES or shipped)")
    parser.add_argument("--checkpoint", default=None, help=f"sd: diffusers checkpoint, Hub id or folder "
                        f"(default {SD_REPO})")
    parser.add_argument("--revision", default=None, help=f"sd: pinned commit of the checkpoint (default "
                        f"{SD_REVISION[:12]}... for the default checkpoint)")
    parser.add_argument("--steps", type=int, default=None, help=f"sd: denoising steps (default {SD_STEPS})")
    parser.add_argument("--size", type=int, help="sd: image side in pixels, a multiple of 8 (default: the checkpoint's)")
    parser.add_argument("--llm", help="a transformers text-generation model to write the descriptions with the "
                        "paper's prompt (default: templates, no language model)")
    parser.add_argument("--llm-revision", help="pinned revision of --llm")
    parser.add_argument("--out", help="output folder (new or empty; nothing is overwritten); optional with "
                        "--protocol (report.json and report.md)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    # Options a protocol file fixes: given next to --protocol they are refused, not silently ignored.
    fixed = {action.dest: action.default for action in parser._actions
             if action.dest not in PROTOCOL_FREE and action.option_strings}
    parser.set_defaults(func=run, _protocol_fixed=fixed)


# Options that apply to a protocol run; every other one is the protocol file's.
PROTOCOL_FREE = {"help", "model", "device", "bases", "out", "json", "protocol", "protocol_settings"}


def run_protocol_command(args) -> int:
    import sys

    from core import engine
    from core.adversarial.protocol import format_report, load_protocol, run_protocol
    from core.adversarial.results import check_output_folder, write_protocol_report
    from core.artifacts.hub import check_user_source
    from core.cli.common import model_line, print_json
    from core.errors import ConfigError

    given = [name for name, default in args._protocol_fixed.items() if getattr(args, name, default) != default]
    if given:
        raise ConfigError(f"--protocol fixes every method setting; drop --{given[0].replace('_', '-')} (or run "
                          "without --protocol)")
    out = check_output_folder(args.out) if args.out else None  # before any work
    if args.bases is not None:
        check_user_source(args.bases)
    protocol = load_protocol(args.protocol)
    names = [n.strip() for n in (args.protocol_settings or "").split(",") if n.strip()] or None
    bundle = engine.load_clip(args.model, device=args.device)
    say = (lambda line: print(line, file=sys.stderr, flush=True))
    say(model_line(bundle.info))
    say(protocol.describe())
    report = run_protocol(bundle, protocol, bases=args.bases, settings=names, log=say)
    text = format_report(report)
    if out is not None:
        write_protocol_report(report, text, out)
    if args.json:
        print_json(report | ({"out": str(out)} if out else {}))
    else:
        print(text, end="")
        if out is not None:
            print(f"wrote {out}: report.json, report.md")
    return 0


SD_OPTIONS = ("checkpoint", "revision", "steps", "size")
MAX_SD_STEPS, MAX_SD_SIZE = 1_000, 2_048


def _check_generator_options(args) -> None:
    """--checkpoint/--revision/--steps/--size draw with Stable Diffusion only: refused with the world stand-in
    (which draws 64-pixel scenes in one step) instead of being ignored; checked before any work, as is --llm."""
    from core import guards
    from core.cli.common import positive
    from core.errors import ConfigError

    given = [f"--{name}" for name in SD_OPTIONS if getattr(args, name) is not None]
    if args.generator != "sd" and given:
        raise ConfigError(f"{', '.join(given)} set(s) how Stable Diffusion draws; the {args.generator!r} generator "
                          "does not use it: add --generator sd, or leave it out")
    if args.generator == "sd":
        positive(args.steps, "--steps", maximum=MAX_SD_STEPS)
        if args.size is not None and (not 64 <= args.size <= MAX_SD_SIZE or args.size % 8):
            raise ConfigError(f"--size must be a multiple of 8 in 64..{MAX_SD_SIZE}, got {args.size}")
        if args.checkpoint is not None:
            guards.check_model_source(args.checkpoint, "Stable Diffusion checkpoint --checkpoint")
    if args.llm is not None:
        guards.check_model_source(args.llm, "--llm (text-generation model)")


def run(args) -> int:
    from core.adversarial.defaults import SD_REPO, SD_REVISION, SD_STEPS
    from core import engine
    from core.adversarial.descriptions import load_text_generator
    from core.adversarial.pipeline import AdversarialConfig, run_adversarial
    from core.adversarial.results import check_output_folder, write_results
    from core.cli.common import device_of, model_line, model_spec, print_json
    from core.progress import TqdmProgress

    from core.artifacts.hub import check_user_source
    from core.engine.text import check_texts
    from core.errors import ConfigError

    if args.protocol is not None:
        return run_protocol_command(args)
    if args.protocol_settings is not None:
        raise ConfigError("--protocol-settings needs --protocol FILE")
    missing = [f"--{name}" for name in ("present", "target", "out") if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} required (or run a protocol file: --protocol FILE --model M)")
    out = check_output_folder(args.out)  # before any work
    model_spec(args)
    _check_generator_options(args)
    if args.bases is not None:
        check_user_source(args.bases)
    for name in ("present", "target"):
        check_texts([getattr(args, name)], what=f"--{name}")
    block = tuple(w.strip() for w in args.block.split(",") if w.strip())
    if block:
        check_texts(block, what="--block word")
    config = AdversarialConfig(
        args.present, args.target, layers=tuple(args.layers) if args.layers else None, neurons=args.neurons,
        words=args.words, per_pair=args.per_pair, similarity=args.similarity,
        similarity_model=args.similarity_model,
        block=block, images=args.images,
        descriptions=args.descriptions, generator=args.generator, repeats=args.repeats, baselines=args.baselines,
        seed=args.seed, templates=args.templates, bases=args.bases, sd_repo=args.checkpoint or SD_REPO,
        sd_revision=args.revision if args.revision is not None or args.checkpoint else SD_REVISION,
        sd_steps=args.steps or SD_STEPS, sd_size=args.size, device=str(device_of(args)),
        unnamed_size=args.unnamed_size, word_scope=args.word_scope, background_scope=args.background_scope)
    bundle = engine.load_clip(args.model, device=args.device)
    say = TqdmProgress()  # its lines go to stderr
    say(None, desc=model_line(bundle.info))
    llm = load_text_generator(args.llm, args.llm_revision, device=str(device_of(args))) if args.llm else None
    report = run_adversarial(bundle, config, llm=llm, progress=say)
    write_results(report, out)
    if args.json:
        summary = report.to_json()
        print_json({k: summary[k] for k in ("model", "present", "target", "direction", "classifier", "generator",
                                            "bases", "word_scores", "filter", "top_words", "stage_counts", "summary",
                                            "seconds")} | {"out": str(out)})
        return 0
    print(model_line(bundle.info))
    print(f"generator:  {report.generator}")
    print(f"classifier: {report.classifier.how}; success = the classifier picks {config.target!r} over {config.present!r}")
    print(f"bases:      {report.bases}")
    print(f"top words ({report.words.how}): " + ", ".join(report.words.words[:10]))
    print("stage counts (second-order, all repeats): " + ", ".join(f"{k} {v}" for k, v in report.stage_counts().items()))
    print(f"\n{'method':16s} {'success (mean +- std over ' + str(config.repeats) + ' repeats)':>42s}  successes / valid")
    for method, row in report.summary().items():
        print(f"{method:16s} {100 * row['success_mean']:33.1f}% +- {100 * row['success_std']:.1f}  "
              + ", ".join(f"{s}/{v}" for s, v in zip(row["successes"], row["valid_images"])))
    print(f"\nwrote {out}: images/, results.csv, words.csv, neurons.csv, removed_words.csv, summary.json")
    return 0
