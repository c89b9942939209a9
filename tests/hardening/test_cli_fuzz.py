"""Generated malformed inputs over every command of `python -m core`: one clear line, exit 2, no traceback, no hang.

Each case is a valid command line with one (or, for the seeded combinations, two) arguments replaced by a hostile
value: missing, folder, pipe, device, self-referencing link, NUL byte, overlong, non-UTF-8, wrong type, out of
range, over a bound, a tampered artifact... Cases run in-process through `core.cli.main(argv)` (milliseconds:
they fail before a model loads, or on the cached tiny model); a few run as real subprocesses to check the exit
status and stderr of the actual program, including a closed pipe. The case list is generated from a seeded
generator, so a failing case id is reproducible.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = "Tiny-ViT/none"
SHA = "0123456789abcdef0123456789abcdef01234567"
SEED = 10

# ---------------------------------------------------------------- hostile values: (value, what the message must say)
# "{name}" is filled from the `hostile` fixture (tests/hardening/conftest.py); "{tmp}" is the case's own folder.

FILE = [
    ("{missing}", r"not found"),
    ("{folder}", r"folder"),
    ("{fifo}", r"regular file|pipe"),
    ("{zero_link}", r"regular file|pipe|device"),
    ("/dev/zero", r"regular file|pipe|device"),
    ("{loop}", r"not found|cannot be read|too many levels"),
    ("{png}\x00.png", r"NUL"),
    ("/tmp/" + "a" * 5000 + ".png", r"too long|not found"),
    ("{under_file}", r"not found|not a directory|cannot"),
    ("{root}/caf\udce9.png", r"not found"),
    ("", r"empty"),
]
IMAGE = FILE + [
    ("{empty}", r"not an image|empty|could not"),
    ("{text_png}", r"not an image"),
    ("{garbage}", r"not an image"),
    ("{nan_tiff}", r"NaN"),
    ("{negative_tiff}", r"negative"),
    ("{huge_png}", r"megapixels|too large"),
]
POOL = FILE[:-1] + [
    ("{latin1}", r"not UTF-8"),
    ("{binary_txt}", r"not UTF-8|no non-empty"),
    ("{blank_txt}", r"no non-empty"),
    ("{long_line}", r"characters, over the limit"),
    ("{fifo_txt}", r"regular file"),
    ("", r"no text pool|empty"),
]
TEMPLATES = [(value, expect) for value, expect in FILE[:-1] if "\x00" not in value] + [
    ("{latin1}", r"not UTF-8"),
    ("{bad_templates[zero]}", r"exactly one \{\}"),
    ("{bad_templates[named]}", r"exactly one \{\}"),
    ("{bad_templates[none]}", r"exactly one \{\}"),
    ("{bad_templates[two]}", r"exactly one \{\}"),
    ("{bad_templates[brace]}", r"malformed"),
]
FOLDER = [
    ("{missing}", r"not found"),
    ("{pool}", r"not a folder|not found"),
    ("{fifo}", r"not a folder|not found"),
    ("{folder}", r"no images|no class|labels file not found|metadata"),
    ("{png}\x00", r"NUL"),
    ("/tmp/" + "b" * 5000, r"not found|too long"),
    ("{under_file}", r"not found|not a folder"),
    ("", r"empty"),
]
LABELLED = FOLDER + [
    ("{bad_csv[latin1]}", r"not UTF-8"),
    ("{bad_csv[nul]}", r"not a readable CSV|NUL"),
    ("{bad_csv[short]}", r"no value"),
    ("{bad_csv[escape]}", r"relative to the table's folder"),
    ("{bad_csv[nocol]}", r"needs columns"),
]
GROUPED = FOLDER + [
    ("{bad_csv[latin1]}", r"not UTF-8"),
    ("{bad_csv[nul]}", r"not a readable CSV|NUL"),
    ("{bad_csv[nocol]}", r"needs a"),
]
OUT_FOLDER = [
    ("{under_file}", r"is a file|not a folder"),
    ("{pool}", r"exists and is not a folder"),
    ("{fifo}", r"exists and is not a folder"),
    ("{png}\x00out", r"NUL"),
    ("/proc/clipscope-out", r"cannot create|cannot write|permission"),
    ("", r"empty"),
]
OUT_FILE = [
    ("{under_file}.safetensors", r"is a file|not a folder"),
    ("{tmp}/phi.txt", r"must end in .safetensors"),
    ("{nan_weights}", r"already exists"),
    ("{folder}", r"is a folder|must end"),
    ("{png}\x00.safetensors", r"NUL"),
    ("", r"empty"),
]
POSITIVE = [
    ("0", r"at least 1"),
    ("-5", r"at least"),
    ("1000000000000", r"over the limit"),
    ("abc", r"invalid int value"),
    ("1.5", r"invalid int value"),
    ("1e12", r"invalid int value"),
    ("", r"invalid int value"),
]
SEEDS = [("-1", r"at least 0"), ("abc", r"invalid int value"), ("0x10", r"invalid int value")]
INDEX = [("-1", r"out of range|at least 0"), ("99", r"out of range|no later"), ("abc", r"invalid int value"),
         ("1e3", r"invalid int value")]
CHOICE = [("bogus", r"unknown|invalid choice|choose|must be one of|valid values"),
          ("", r"unknown|invalid choice|choose|must be one of|valid values"),
          ("\udcff", r"unknown|invalid choice|choose|must be one of|valid values")]
TEXT = [("", r"empty"), ("   ", r"empty"), ("caf\udce9", r"not valid UTF-8"), ("x" * 20_000, r"over the limit")]
HEADS = [("x", r"must look like"), ("1.2.3", r"must look like"), ("99.0", r"out of range"),
         ("-1.0", r"out of range"), ("2.99", r"out of range"), (",", r"no heads|must look like")]
HEAD_FILES = [("{bad_heads[deep]}", r"nested too deeply|not a JSON"), ("{bad_heads[shape]}", r"integer pairs"),
              ("{bad_heads[text]}", r"must look like|not a JSON"), ("{bad_heads[bool]}", r"integer pairs"),
              ("{missing}.json", r"not found"), ("{fifo}.json", r"not found"), ("{folder}/x.json", r"not found")]
MODELS = [
    ("", r"empty model spec"),
    ("ViT-Q-99/none", r"unknown architecture"),
    ("ViT-B-32/not_a_tag", r"unknown pretrained tag"),
    ("ViT-B-32", r"names an architecture but not its weights"),
    ("ViT-B-32/openai", r"could not obtain weights"),
    ("hf-hub:", r"malformed hub spec"),
    ("Tiny-ViT/{missing}.safetensors", r"not found"),
    ("Tiny-ViT/{plain_pt}", r"could not load weights"),
    ("Tiny-ViT/{zero_st}", r"could not load weights"),
    ("Tiny-ViT/{bad_st}", r"could not load weights"),
    ("Tiny-ViT/{nan_weights}", r"NaN or infinite"),
    ("Tiny-ViT/{inf_weights}", r"NaN or infinite"),
    ("Tiny-ViT//dev/zero", r"not found|could not load"),
    ("Tiny-ViT/{fifo}", r"not found|could not load"),
]
WORLD = [("world:x", r"needs integers"), ("world:0", r"at least 1"), ("world:1000000000", r"over the limit"),
         ("world:5:-1", r"seed >= 0"), ("world:1:2:3", r"world:N\[:SEED\]"), ("world:", r"needs integers")]
BASES_FOLDER = [
    ("{missing}", r"no bases folder|not found"),
    ("{pool}", r"no bases folder|not a folder"),
    ("{fifo}", r"no bases folder|not a folder"),
    ("/tmp/" + "b" * 5000, r"no bases folder|too long"),
    ("{under_file}", r"no bases folder|not found"),
    ("{folder}", r"no manifest.json"),
    ("TAMPERED", None),
]
SCENE_SIZES = [("31", r"at least 32"), ("100000", r"over the limit"), ("abc", r"invalid int value"),
               ("-64", r"at least 32")]

# ---------------------------------------------------------------- commands: a valid command line, and what to break

@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]  # a valid command line ("--flag value" pairs after the command words)
    words: int  # leading words that name the command
    mutations: tuple[tuple[str, list], ...]  # (flag, hostile values)


def _base(*argv) -> tuple[str, ...]:
    return tuple(argv)


COMMANDS = {
    "decompose": Command(_base("decompose", "--model", MODEL, "--image", "{png}", "--text", "a red circle"), 1, (
        ("--model", MODELS), ("--image", IMAGE), ("--text", TEXT), ("--convention", CHOICE))),
    "ablate": Command(_base("ablate", "--model", MODEL, "--images", "{scenes}", "--label-column", "shape",
                            "--templates", "simple"), 1, (
        ("--images", LABELLED), ("--label-column", [("nope", r"needs columns")]), ("--means-from", FOLDER),
        ("--templates", TEMPLATES), ("--heads", HEADS[:2] + HEADS[3:5]), ("--batch-size", POSITIVE),
        ("--convention", CHOICE), ("--model", MODELS[:4]))),
    "toy scenes": Command(_base("toy", "scenes", "--n", "3", "--seed", "0", "--out", "{tmp}/scenes"), 2, (
        ("--n", POSITIVE), ("--seed", SEEDS), ("--size", SCENE_SIZES), ("--split", CHOICE),
        ("--out", OUT_FOLDER + [("{scenes}", r"not empty")]))),
    "toy train": Command(_base("toy", "train", "--out", "{tmp}/w.safetensors", "--steps", "1", "--batch-size", "64",
                               "--no-card"), 2, (
        ("--steps", POSITIVE[:2] + [("1000000000000", r"at most"), ("abc", r"invalid int value"),
                    ("100000000", r"at most")]),
        ("--batch-size", [("1", r"at least 2|group"), ("0", r"at least 2|group"), ("100000", r"at most")]),
        ("--lr", [("nan", r"between 0 and 1"), ("inf", r"between 0 and 1"), ("-1", r"between 0 and 1"),
                  ("0", r"between 0 and 1"), ("abc", r"invalid float value")]),
        ("--warmup", [("0", r"at least 1"), ("-2", r"at least 1")]), ("--seed", SEEDS),
        ("--group-size", [("1", r"group_size"), ("9", r"group_size")]), ("--threads", [("0", r"at least 1")]),
        ("--init", [("{missing}", r"not a toy checkpoint"), ("{pool}", r"not a toy checkpoint"),
                    ("{folder}", r"not a toy checkpoint"), ("", r"empty path")]),
        ("--out", [("{pool}", r"not written by `python -m core toy train`"), ("{under_file}", r"is a file"),
                   ("{folder}", r"is a folder"), ("", r"empty")]))),
    "toy evaluate": Command(_base("toy", "evaluate", "--model", MODEL, "--n", "5"), 2, (
        ("--n", POSITIVE), ("--seed", SEEDS), ("--model", MODELS))),
    "textspan": Command(_base("textspan", "--model", MODEL, "--images", "{images}", "--texts", "{pool}", "--out",
                              "{tmp}/ts", "--rank", "4", "--per-head", "2"), 1, (
        ("--images", FOLDER), ("--texts", POOL), ("--pool-name", TEXT[2:]),
        ("--layers", [("99", r"out of range"), ("-1", r"out of range"), ("abc", r"invalid int value")]),
        ("--heads", HEADS), ("--per-head", POSITIVE), ("--rank", POSITIVE), ("--criterion", CHOICE),
        ("--span", CHOICE), ("--convention", CHOICE), ("--batch-size", POSITIVE), ("--out", OUT_FOLDER),
        ("--evaluate", FOLDER), ("--templates", TEMPLATES), ("--m", POSITIVE[:4]),
        ("--show", [("-1", r"at least 0"), ("1000000", r"over the limit"), ("x", r"invalid int value")]),
        ("--model", MODELS[:8]))),
    "retrieve": Command(_base("retrieve", "--model", MODEL, "--image", "{png}", "--gallery", "{images}", "--layer", "2",
                              "--head", "1", "--no-cache"), 1, (
        ("--image", IMAGE), ("--gallery", FOLDER), ("--layer", INDEX), ("--head", INDEX), ("--k", POSITIVE),
        ("--metric", CHOICE), ("--convention", CHOICE), ("--batch-size", POSITIVE), ("--model", MODELS[:8]))),
    "spurious": Command(_base("spurious", "--model", MODEL, "--images", "{grouped}", "--heads", "2.1", "--templates",
                              "simple", "--trials", "1"), 1, (
        ("--images", GROUPED), ("--heads", HEADS + HEAD_FILES), ("--trials", POSITIVE[1:]), ("--seed", SEEDS),
        ("--samples", [("10", r"at least 1000"), ("abc", r"invalid int value")]),
        ("--random-layers", INDEX), ("--means-from", FOLDER), ("--classnames", [("a,b,c", r"class names given"),
                                                                                (",", r"class names given")]),
        ("--split", [("7", r"no 'split' column")]), ("--templates", TEMPLATES), ("--convention", CHOICE),
        ("--batch-size", POSITIVE), ("--model", MODELS[:8]))),
    "neurons": Command(_base("neurons", "--model", MODEL, "--layer", "1", "--images", "world:12", "--texts", "{pool}",
                             "--out", "{tmp}/nb", "--k", "3", "--terms", "2"), 1, (
        ("--layer", INDEX), ("--images", FOLDER[:-1] + WORLD), ("--texts", POOL), ("--out", OUT_FOLDER),
        ("--k", POSITIVE[:4] + [("100", r"k = 100|at most|images")]), ("--terms", POSITIVE[:4]),
        ("--dictionary", CHOICE), ("--mode", CHOICE), ("--evaluate", FOLDER), ("--templates", TEMPLATES),
        ("--batch-size", POSITIVE), ("--model", MODELS[:8]))),
    "concepts": Command(_base("concepts", "--model", MODEL, "--image", "{png}", "--bases", "{bases}"), 1, (
        ("--image", IMAGE), ("--bases", BASES_FOLDER),
        ("--layer", [("0", r"not layer 0"), ("-1", r"not layer -1"), ("x", r"invalid int value")]),
        ("--top", POSITIVE), ("--model", MODELS[:8]))),
    "second-order": Command(_base("second-order", "--model", MODEL, "--layer", "1", "--image", "{png}", "--out",
                                  "{tmp}/phi.safetensors"), 1, (
        ("--layer", INDEX + [("2", r"no later attention")]), ("--image", IMAGE), ("--out", OUT_FILE),
        ("--mode", CHOICE), ("--model", MODELS))),
    "bases build": Command(_base("bases", "build", "--model", MODEL, "--images", "world:12", "--texts", "{pool}",
                                 "--out", "{tmp}/bb", "--layers", "2", "--neuron-layers", "1", "--per-head", "2",
                                 "--rank", "4", "--k", "3", "--terms", "2"), 2, (
        ("--images", FOLDER[:-1] + WORLD), ("--texts", POOL), ("--out", OUT_FOLDER),
        ("--layers", [("99", r"out of range"), ("-1", r"at least 0")]),
        ("--neuron-layers", [("99", r"out of range"), ("-1", r"at least 0"), ("2", r"no later")]),
        ("--per-head", POSITIVE), ("--rank", POSITIVE), ("--k", POSITIVE[:4]), ("--terms", POSITIVE[:4]),
        ("--dictionary", CHOICE), ("--batch-size", POSITIVE), ("--model", MODELS[:8]))),
    "bases verify": Command(_base("bases", "verify", "{bases}"), 2, (("", BASES_FOLDER),)),
    "bases info": Command(_base("bases", "info", "{bases}"), 2, (
        ("", BASES_FOLDER + [("org/name", r"no revision given"),
                                          ("org/name@main", r"not a pinned"),
                                          (f"org/name@{SHA}", r"not in the local Hugging Face cache")]),)),
    "bases pull": Command(_base("bases", "pull", "org/name", "--revision", SHA), 2, (
        ("", [("not a repo!", r"not a valid Hub repo id|not in the local"), ("a/b/c", r"not a valid Hub repo id"),
              ("", r"not a valid Hub repo id|repo")]),
        ("--revision", [("main", r"not a pinned"), ("", r"no revision|not a pinned"), ("zz", r"not a pinned")]),
        ("--cache-dir", [("{png}\x00", r"NUL")]))),
    "bases push": Command(_base("bases", "push", "{bases}", "--repo-id", "org/name"), 2, (
        ("", BASES_FOLDER), ("--repo-id", [("bad id!", r"not a valid Hub repo id|HF_HUB_OFFLINE")]))),
}

# Zero-shot segmentation (issue 12): segment and segeval.
THRESHOLD = [("high", r"threshold"), ("1.5", r"threshold"), ("nan", r"threshold"), ("-0.1", r"threshold"),
             ("", r"threshold")]
STARTS = [("99", r"out of range"), ("-99", r"out of range"), ("abc", r"invalid int value")]
DATASET = [("{missing}", r"not found"), ("{pool}", r"not an HDF5"), ("{fifo}", r"regular file|pipe"),
           ("{folder}", r"images/ and a masks/"), ("{png}\x00", r"NUL"), ("/tmp/" + "b" * 5000, r"not found|too long"),
           ("{under_file}", r"not found|cannot be read|not a directory"), ("", r"empty")] + WORLD
SEGMENT = ("segment", "--model", MODEL, "--image", "{png}", "--text", "a red circle", "--out", "{tmp}/seg")
COMMANDS["segment"] = Command(_base(*SEGMENT), 1, (
    ("--model", MODELS), ("--image", IMAGE), ("--text", TEXT), ("--background", TEXT), ("--method", CHOICE),
    ("--threshold", THRESHOLD), ("--heads", HEADS), ("--top-k", POSITIVE), ("--seed", SEEDS), ("--device", CHOICE),
    ("--rollout-start", STARTS), ("--chefer-start", STARTS), ("--clamp", CHOICE), ("--convention", CHOICE),
    ("--neuron-layers", [("-1", r"at least 0"), ("abc", r"invalid int value")]),
    ("--out", OUT_FOLDER + [("{scenes}", r"not empty")])))
COMMANDS["segment neurons"] = Command(_base(*SEGMENT, "--method", "neurons", "--bases", "{bases}", "--top-k", "5"), 1, (
    ("--bases", BASES_FOLDER), ("--neuron-layers", [("0", r"cover layer"), ("99", r"cover layer")]),
    ("--top-k", [("100000", r"top-k must be|over the limit")])))
COMMANDS["segeval"] = Command(_base("segeval", "--model", MODEL, "--dataset", "world:3:1", "--method", "heads",
                                    "--state-dir", "{tmp}/state"), 1, (
    ("--model", MODELS), ("--dataset", DATASET), ("--method", CHOICE), ("--protocol", CHOICE),
    ("--class-source", CHOICE), ("--threshold", THRESHOLD), ("--clamp", CHOICE), ("--batch-size", POSITIVE),
    ("--limit", POSITIVE), ("--classes", POOL), ("--device", CHOICE), ("--state-dir", OUT_FOLDER),
    ("--save-maps", OUT_FOLDER + [("{scenes}", r"not empty")])))

# Semantic adversarial images (issue 14): the world generator keeps every valid case offline and fast.
COUNT = [(value, r"must be an integer in|invalid int value") for value, _ in POSITIVE]
SIMILARITY = [("nan", r"similarity"), ("1.5", r"similarity"), ("-2", r"similarity"), ("abc", r"invalid float value")]
CLASSES = [("bogus", r"draws only the world's shapes"), ("", r"empty"), ("caf\udce9", r"not valid UTF-8"),
           ("x" * 20_000, r"over the limit")]
COMMANDS["adversarial"] = Command(_base("adversarial", "--model", "toy-biased", "--present", "square", "--target",
                                        "triangle", "--images", "2", "--descriptions", "1", "--repeats", "1",
                                        "--neurons", "5", "--words", "3", "--out", "{tmp}/adv"), 1, (
    ("--model", MODELS[:8]), ("--similarity-model", MODELS[:8]), ("--present", CLASSES), ("--target", CLASSES[1:]),
    ("--neurons", COUNT), ("--words", COUNT), ("--images", COUNT), ("--descriptions", COUNT), ("--repeats", COUNT),
    ("--seed", [("-1", r"integer in 0\.\."), ("abc", r"invalid int value")]), ("--similarity", SIMILARITY),
    ("--templates", CHOICE), ("--generator", CHOICE),
    ("--bases", BASES_FOLDER[:-1] + [("{bases}", r"for another model")]),
    ("--layers", [("99", r"not 99"), ("abc", r"invalid int value")]),
    ("--block", TEXT[2:]), ("--out", OUT_FOLDER + [("{scenes}", r"already holds files")])))

# One command per paper table (issue 22): every refusal comes before a model loads.
COMMANDS["reproduce"] = Command(_base("reproduce", "p1-ablations", "--model", MODEL, "--images", "{scenes}",
                                      "--label-column", "shape", "--out", "{tmp}/r.json"), 1, (
    ("", [("nothing", r"unknown table"), ("", r"unknown table")]), ("--limit", POSITIVE), ("--batch-size", POSITIVE),
    ("--per-head", POSITIVE), ("--repeats", [("0", r"at least 1"), ("11", r"at most 10"), ("x", r"invalid int")]),
    ("--generator", [("bogus", r"sd or world")]), ("--model", MODELS[:8])))
# Circuits (issue 24): a neuron's out-edges (weights, data) and a head's in-edges.
COMMANDS["circuit"] = Command(_base("circuit", "--model", MODEL, "--layer", "1", "--neuron", "3", "--weights-only",
                                    "--bases", "{bases}"), 1, (
    ("--model", MODELS), ("--layer", [("-1", r"at least 0"), ("99", r"out of range"), ("2", r"no later attention"),
                                      ("abc", r"invalid int value")]),
    ("--neuron", [("-1", r"at least 0"), ("192", r"out of range"), ("abc", r"invalid int value")]),
    ("--target", [("   ", r"target"), ("x" * 20_000, r"target"), ("class:", r"class name")]),
    ("--top", POSITIVE), ("--bases", BASES_FOLDER), ("--mode", CHOICE), ("--device", CHOICE),
    ("--images", [("world:5", r"no images")])))
COMMANDS["circuit data"] = Command(_base("circuit", "--model", MODEL, "--layer", "1", "--neuron", "3", "--images",
                                         "world:12", "--k", "4"), 1, (
    ("--images", FOLDER + WORLD), ("--k", POSITIVE[:3] + [("50", r"k = 50")]), ("--mean-images", POSITIVE),
    ("--batch-size", POSITIVE)))
COMMANDS["circuit head"] = Command(_base("circuit", "--model", MODEL, "--head", "2.1"), 1, (
    ("--head", [("x", r"LAYER\.HEAD"), ("9.1", r"out of range"), ("2.9", r"out of range"), ("0.0", r"layer 0"),
                ("", r"LAYER\.HEAD")]),
    ("--layer", [("5", r"out of range")]), ("--neuron", [("3", r"one of them")]),
    ("--images", [("world:5", r"weight edges")])))

# Paths each command reads or writes, given a valid value: in public mode every one of them is refused.
PUBLIC_PATHS = {
    "decompose": ["--image"], "ablate": ["--images", "--means-from", "--templates"],
    "toy scenes": ["--out"], "textspan": ["--images", "--texts", "--out", "--evaluate", "--templates"],
    "retrieve": ["--image", "--gallery"], "spurious": ["--images", "--means-from", "--templates", "--heads"],
    "neurons": ["--images", "--texts", "--out"], "concepts": ["--image", "--bases"],
    "second-order": ["--image", "--out"], "bases build": ["--images", "--texts", "--out"],
    "bases verify": [""], "bases push": [""],
}
PUBLIC_VALUES = {"--images": "{images}", "--means-from": "{images}", "--templates": "{templates}", "--out": "{tmp}/o",
                 "--texts": "{pool}", "--evaluate": "{scenes}", "--image": "{png}", "--gallery": "{images}",
                 "--heads": "{heads_json}", "--bases": "{bases}", "": "{bases}"}
PUBLIC_PATHS.update({"reproduce": ["--out"], "adversarial": ["--out", "--bases"], "segment": ["--image", "--out"], "segeval": ["--dataset", "--state-dir", "--save-maps", "--classes"]})
PUBLIC_PATHS.update({"circuit": ["--bases"], "circuit data": ["--images"]})
PUBLIC_VALUES.update({"--dataset": "{scenes}", "--state-dir": "{tmp}/state", "--save-maps": "{tmp}/maps",
                      "--classes": "{pool}"})

GLOBAL = [
    (("nonsense",), r"invalid choice"),
    (("decompose",), r"required"),
    (("decompose", "--image"), r"expected one argument"),
    (("--allow-path",), r"expected one argument"),
    (("toy", "scenes", "--n", "3"), r"required"),
    (("toy", "nothing"), r"invalid choice"),
    (("bases", "nothing"), r"invalid choice"),
    (("decompose", "--model", MODEL, "--image", "{png}", "--text", "a", "--unknown-flag", "1"), r"unrecognized"),
    (("ablate", "--images", "{scenes}", "--label-column", "caption", "--templates", "toy", "--model", MODEL),
     r"needs --label-column one of"),
    (("textspan", "--model", MODEL, "--images", "{images}", "--texts", "{pool}", "--out", "{tmp}/t", "--layers", "1",
      "--heads", "1.1"), r"not both"),
]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: str | None  # regex the error line must match; None: a tampered artifact's own regex


def _replace(argv: tuple[str, ...], words: int, flag: str, value: str) -> tuple[str, ...]:
    argv = list(argv)
    if flag == "":  # the positional argument right after the command words
        argv[words] = value
        return tuple(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return tuple(argv)
    if flag == "--heads" and "--layers" in argv:
        index = argv.index("--layers")
        del argv[index:index + 2]
    return tuple(argv) + (flag, value)


def generate_cases() -> list[Case]:
    cases: list[Case] = []
    for name, command in COMMANDS.items():
        for flag, values in command.mutations:
            for index, (value, expect) in enumerate(values):
                label = f"{name}|{flag or 'arg'}|{index}"
                if value == "TAMPERED":
                    cases += [Case(f"{label}|{tampered}", _replace(command.argv, command.words, flag,
                                                                  f"{{tampered[{tampered}]}}"), None)
                              for tampered in TAMPERED_NAMES]
                else:
                    cases.append(Case(label, _replace(command.argv, command.words, flag, value), expect))
    for name, flags in PUBLIC_PATHS.items():
        command = COMMANDS[name]
        for flag in flags:
            argv = _replace(command.argv, command.words, flag, PUBLIC_VALUES[flag])
            if "--model" in argv:
                argv = _replace(argv, command.words, "--model", "toy")
            cases.append(Case(f"{name}|{flag or 'arg'}|public", ("--public",) + argv, r"public server"))
        if MODEL in command.argv:  # a command whose valid line loads random weights: refused in public mode
            cases.append(Case(f"{name}|--model|public-random", ("--public",) + command.argv,
                              r"public server|not served"))
    for index, (argv, expect) in enumerate(GLOBAL):
        cases.append(Case(f"global|{index}", argv, expect))
    # Seeded pairs: two hostile values at once; either message is acceptable.
    rng = random.Random(SEED)
    singles = [(name, flag, value, expect) for name, command in COMMANDS.items()
               for flag, values in command.mutations for value, expect in values if value != "TAMPERED" and flag]
    for index in range(60):
        name, flag, value, expect = rng.choice(singles)
        command = COMMANDS[name]
        others = [(f, v, e) for n, f, v, e in singles if n == name and f != flag]
        if not others:
            continue
        flag2, value2, expect2 = rng.choice(others)
        argv = _replace(_replace(command.argv, command.words, flag, value), command.words, flag2, value2)
        cases.append(Case(f"pair|{index}|{name}|{flag}|{flag2}", argv, f"(?:{expect})|(?:{expect2})"))
    return cases


TAMPERED_NAMES = ("corrupt_data_rehashed", "wrong_shape_rehashed", "index_out_of_range", "nan_tensor", "inf_threshold",
                  "deep_manifest", "manifest_is_folder", "manifest_is_fifo", "manifest_to_dev_zero",
                  "data_to_system_file", "data_is_fifo", "count_many", "nan_metric", "huge_metric", "bytes_not_int",
                  "oversize_manifest", "not_an_object", "path_escape", "random_init_text", "layers_not_ints",
                  "texts_not_list", "latin1_manifest")
# Refusals that only a deep check sees (they verify fine and fail where the tensors are used).
LOAD_TIME_ONLY = {"wrong_shape_rehashed", "index_out_of_range", "layers_not_ints"}  # (texts_not_list: verify too)
CASES = generate_cases()


def _fill(argv: tuple[str, ...], hostile, tmp: Path) -> list[str]:
    fields = {**vars(hostile), "tmp": tmp, "tampered": {k: v[0] for k, v in hostile.tampered.items()}}
    return [part.format(**fields) if "{" in part and "}" in part and not part.startswith("x" * 10) else part
            for part in argv]


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("a case ran for more than 60 s: a hang")


def test_enough_cases():
    assert len(CASES) >= 400, len(CASES)
    assert len({case.id for case in CASES}) == len(CASES)
    covered = {case.argv[0] if case.argv[0] != "--public" else case.argv[1] for case in CASES}
    from core.cli import COMMAND_MODULES

    assert {name.replace("_", "-") for name in COMMAND_MODULES} <= covered


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_malformed_input_is_one_clear_line(case, hostile, tmp_path, capsys):
    argv = _fill(case.argv, hostile, tmp_path)
    expect = case.expect
    if expect is None:
        name = next(n for n in TAMPERED_NAMES if str(hostile.tampered[n][0]) in argv)
        expect = hostile.tampered[name][1]
        if name in LOAD_TIME_ONLY and argv[:2] in (["bases", "info"], ["bases", "push"], ["bases", "verify"]):
            expect = None  # these load and push fine: the damage is only seen where the tensors are read
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        status = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    if expect is None:  # artifact-level checks pass; the damage is refused where tensors are read (other cases)
        assert status in (0, 2) and err.count("error: ") <= 1, err[-2000:]
        return
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2, (status, err[-2000:], out[-500:])
    assert len(errors) == 1, err[-2000:]
    assert len(errors[0]) > len("error: ") + 10
    assert re.search(expect, errors[0], re.IGNORECASE), (expect, errors[0][:600])


def test_a_case_is_reproducible():
    assert [case.id for case in generate_cases()] == [case.id for case in CASES]


# ---------------------------------------------------------------- the real program, as a user runs it

ENV_KEYS = {"CLIPSCOPE_MODEL_CONFIGS": str(ROOT / "tests" / "model_configs"), "HF_HUB_OFFLINE": "1"}


def _run(args, hostile, tmp_path, **kwargs) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **ENV_KEYS}
    return subprocess.run([sys.executable, "-m", "core", *_fill(tuple(args), hostile, tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, timeout=120, **kwargs)


SUBPROCESS_CASES = [
    (("toy", "scenes", "--n", "1000000000000", "--seed", "0", "--out", "{tmp}/s"), r"over the limit"),
    (("toy", "evaluate", "--n", "1000000000"), r"over the limit"),
    (("toy", "scenes", "--n", "3", "--seed", "0", "--size", "100000", "--out", "{tmp}/s"), r"over the limit"),
    (("decompose", "--model", MODEL, "--image", "{png}", "--text", b"caf\xe9".decode("utf-8", "surrogateescape")),
     r"not valid UTF-8"),
    (("bases", "verify", "{tampered[manifest_is_fifo]}"), r"not a regular file"),
    (("--public", "decompose", "--model", "toy", "--image", "/etc/hostname", "--text", "a"), r"public server"),
]


@pytest.mark.parametrize("args, expect", SUBPROCESS_CASES, ids=[" ".join(a[:2]) + f"|{i}" for i, (a, _)
                                                                 in enumerate(SUBPROCESS_CASES)])
def test_the_program_exits_2_with_one_line(args, expect, hostile, tmp_path):
    result = _run(args, hostile, tmp_path)
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, err
    assert "Traceback" not in err
    assert err.count("error: ") == 1 and re.search(expect, err), err


def test_a_closed_pipe_is_one_line_and_exit_2(hostile, tmp_path):
    """`decompose ... | head -1`: the reader goes away; the program says so once, exits 2, no traceback."""
    texts = [part for i in range(400) for part in ("--text", f"text {i}")]
    command = [sys.executable, "-m", "core", "decompose", "--model", MODEL, "--image", str(hostile.png), *texts]
    import os

    shell = " ".join(f"'{part}'" for part in command) + " | head -1; exit ${PIPESTATUS[0]}"
    result = subprocess.run(["bash", "-c", shell], cwd=ROOT, env={**os.environ, **ENV_KEYS}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.stderr.count("error: ") == 1 and "closed" in result.stderr
    assert result.stdout.startswith("model:")


# ---------------------------------------------------------------- the big run: every folder hashed around every call
#
# Over a thousand generated invocations of every command, each in a folder of its own that the run hashes before
# and after the call, as is the shared folder of hostile inputs: no traceback, no hang, no silently wrong result,
# and no user file changed. Only a declared output (--out, --save-maps, --state-dir, --work-dir) may change, and
# only in files the command's own manifest lists (for a single-file output: that file, when the command wrote it).
# Half the cases plant a hazard where the command writes: a user's file beside or in place of an output, a forged
# manifest, a link to a file or folder outside, an output the user edited after an earlier run.

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

OUTPUT_FLAGS = ("--out", "--save-maps", "--state-dir", "--work-dir")
FILE_OUTPUTS = {"second-order", "toy train"}
BIG_SEED = 2020


def snapshot(folder: Path) -> dict[str, tuple]:
    """rel -> (kind, sha256 or link target or None) of every entry under `folder`, links never followed."""
    entries: dict[str, tuple] = {}
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(top) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir", None)
            elif path.is_file():
                entries[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                entries[rel] = ("other", None)
    return entries


def _manifest_listing(folder: Path) -> dict[str, str | None]:
    """What clipscope's manifests in `folder` list as the command's own: rel -> recorded sha256 (None: any)."""
    listed: dict[str, str | None] = {}
    if not folder.is_dir() or folder.is_symlink():
        return listed
    for manifest in folder.glob(".clipscope-*.json"):
        try:
            record = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and str(record.get("kind", "")).startswith("clipscope-"):
            listed[manifest.name] = None
            files = record.get("files", {})
            for rel, sha in (files.items() if isinstance(files, dict) else []):
                listed[rel] = sha.get("sha256") if isinstance(sha, dict) else sha
    try:
        record = json.loads((folder / "manifest.json").read_text())
        if isinstance(record, dict) and record.get("kind") == "clipscope-bases":
            listed["manifest.json"] = None
            listed["README.md"] = record.get("card_sha256")
            listed.update({rel: entry.get("sha256") for rel, entry in record.get("files", {}).items()})
    except (OSError, ValueError, AttributeError):
        pass
    return listed


def _declared_outputs(argv: list[str], tmp: Path) -> list[Path]:
    outputs = [Path(argv[i + 1]) for i, part in enumerate(argv[:-1]) if part in OUTPUT_FLAGS]
    return [path for path in outputs if str(path).startswith(str(tmp))]


def _owned(outputs: list[Path], tmp: Path, before: dict[str, tuple], single_files: set[str]) -> set[str]:
    """Entries (relative to tmp) the call may replace or delete: listed in its output's manifest and unchanged."""
    owned: set[str] = set()
    for output in outputs:
        base = output.relative_to(tmp).as_posix()
        for rel, sha in _manifest_listing(output).items():
            key = f"{base}/{rel}"
            if key in before and before[key][0] == "file" and (sha is None or before[key][1] == sha):
                owned.add(key)
    return owned | single_files


def check_call(argv: list[str], tmp: Path, hostile_root: Path, hostile_before: dict, *, single_files=frozenset(),
               expect_refusal: bool = False) -> tuple[int, str]:
    """Run `argv` in-process with the checks above; returns (status, the error line or '')."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    outputs = _declared_outputs(argv, tmp)
    before = snapshot(tmp)
    owned = _owned(outputs, tmp, before, set(single_files))
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            status = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = out.getvalue(), err.getvalue()
    assert "Traceback" not in err + out, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status in (0, 2) and len(errors) == (status == 2), (status, err[-2000:])
    assert not (expect_refusal and status == 0), ("accepted", argv, out[-500:])
    if status == 0:  # not silently wrong: no NaN printed, every listed output present
        assert not re.search(r"\bnan\b", out, re.IGNORECASE), out[-1000:]
    after = snapshot(tmp)
    assert snapshot(hostile_root) == hostile_before, "a shared input changed"
    for rel, entry in before.items():  # a user's entry is kept as it was
        if after.get(rel) != entry and entry[0] != "dir":
            assert rel in owned, ("replaced or deleted", rel, argv)
    bases = {output.relative_to(tmp).as_posix(): output for output in outputs}
    for rel, entry in after.items():
        if entry[0] == "dir" or before.get(rel) == entry:
            continue
        home = next((base for base in bases if rel == base or rel.startswith(base + "/")), None)
        assert home is not None, ("written outside the declared outputs", rel, argv)
        if rel == home:  # a single-file output
            continue
        listed = _manifest_listing(bases[home])
        assert rel[len(home) + 1:] in listed, ("written but not listed in the manifest", rel, argv)
    return status, errors[0] if errors else ""


# Valid lines of each writing command, with its output in {out} (a folder, or a file for FILE_OUTPUTS) and the
# names it writes there (where a hazard plants a user's file or a link) and a sub-folder it writes into.
WRITERS = {
    "toy scenes": (("toy", "scenes", "--n", "3", "--seed", "0", "--out", "{out}", "--overwrite"),
                   ["images/000000.png", "labels.csv"], "images"),
    "textspan": (("textspan", "--model", MODEL, "--images", "{images}", "--texts", "{pool}", "--out", "{out}",
                  "--layers", "2", "--rank", "4", "--per-head", "2", "--overwrite"),
                 ["manifest.json", "README.md", "tensors/textspan_L2H0.safetensors"], "tensors"),
    "neurons": (("neurons", "--model", MODEL, "--layer", "1", "--images", "world:12", "--texts", "{pool}", "--out",
                 "{out}", "--k", "3", "--terms", "2", "--overwrite"), ["manifest.json", "extra/texts.json"], "extra"),
    "bases build": (("bases", "build", "--model", MODEL, "--images", "world:12", "--texts", "{pool}", "--out", "{out}",
                     "--layers", "2", "--neuron-layers", "1", "--per-head", "2", "--rank", "4", "--k", "3", "--terms",
                     "2", "--overwrite", "--work-dir", "{work}"), ["README.md", "tables/textspan.parquet"], "tables"),
    "segment": (("segment", "--model", MODEL, "--image", "{png}", "--text", "a red circle", "--text", "a square",
                 "--out", "{out}"), ["00_a_red_circle_map.png", "segment.json", "labels.npy"], None),
    "segeval maps": (("segeval", "--model", MODEL, "--dataset", "world:2:1", "--method", "heads", "--state-dir",
                      "{work}", "--save-maps", "{out}"), ["segeval.json", "00000_mask.png", "heads/00000_map.npy"],
                     "heads"),
    "adversarial": (("adversarial", "--model", "toy-biased", "--present", "square", "--target", "triangle", "--images",
                     "2", "--descriptions", "1", "--repeats", "1", "--neurons", "5", "--words", "3", "--out", "{out}"),
                    ["results.csv", "summary.json"], "images"),
    "second-order": (("second-order", "--model", MODEL, "--layer", "1", "--image", "{png}", "--out", "{out}",
                      "--overwrite"), [], None),
    "toy train": (("toy", "train", "--out", "{out}", "--steps", "1", "--batch-size", "64", "--no-card", "--overwrite"),
                  [], None),
}
HAZARDS = ("beside", "collide", "forged", "link_file", "link_dir", "dangling", "edited", "clean")


def _clear(path: Path) -> Path:
    """Make room for a user's entry where an earlier run left one of its outputs (the user replaces it)."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _plant(hazard: str, out: Path, targets: list[str], subfolder: str | None, victim: Path, kind: str) -> None:
    """Put a user's hazard where the command writes (`out` may not exist yet, or hold an earlier run's files)."""
    if kind == "file":
        if hazard in ("collide", "forged"):
            out.write_bytes(b"the user's own file")
        elif hazard in ("link_file", "link_dir"):
            out.symlink_to(victim / "victim.txt")
        elif hazard == "dangling":
            out.symlink_to(victim / "created-through-a-link.safetensors")
        return
    out.mkdir(parents=True, exist_ok=True)
    if hazard in ("beside", "edited"):
        (out / "notes.txt").write_text("the user's notes")
        (out / "mine").mkdir(exist_ok=True)
        (out / "mine" / "photo.png").write_bytes(b"\x89PNG the user's photo")
    if hazard == "collide" and targets:
        for rel in targets[:2]:
            _clear(out / rel).write_bytes(b"the user's file with a name the command uses")
    if hazard == "forged":
        (out / "notes.txt").write_text("the user's notes")
        forged = {"kind": "clipscope-segment", "files": {"notes.txt": None, **{rel: None for rel in targets}}}
        for name in (".clipscope-segment.json", ".clipscope-scenes.json", ".clipscope-segeval-maps.json",
                     ".clipscope-adversarial.json"):
            (out / name).write_text(json.dumps({**forged, "kind": "clipscope-" + name[11:-5]}))
        (out / "segment.json").write_text(json.dumps({"files": ["notes.txt", *targets]}))
        for rel in targets[:1]:
            _clear(out / rel).write_bytes(b"the user's file, listed by a forged manifest")
    if hazard == "link_file" and targets:
        _clear(out / targets[0]).symlink_to(victim / "victim.txt")
    if hazard == "dangling" and targets:
        _clear(out / targets[-1]).symlink_to(victim / "created-through-a-link")
    if hazard == "link_dir" and subfolder:
        _clear(out / subfolder).symlink_to(victim, target_is_directory=True)


def big_cases() -> list[tuple[str, object]]:
    """(id, case): hazard cases for every writer, then seeded combinations of one to three hostile values for
    every command, some run as --public or under --allow-path."""
    cases: list[tuple[str, object]] = []
    for name in WRITERS:
        for hazard in HAZARDS:
            cases.append((f"hazard|{name}|{hazard}", ("hazard", name, hazard)))
            if name in ("segment", "toy scenes", "segeval maps"):  # outputs written twice: the rerun replaces
                cases.append((f"hazard|{name}|{hazard}|rerun", ("hazard", name, hazard + "+rerun")))
    rng = random.Random(BIG_SEED)
    mutable = [(name, command) for name, command in COMMANDS.items() if command.mutations]
    while len(cases) < 1100:
        name, command = rng.choice(mutable)
        picked = rng.sample(command.mutations, min(len(command.mutations), rng.choice((1, 1, 2, 3))))
        argv = command.argv
        for flag, values in picked:
            value, _ = rng.choice(values)
            if value == "TAMPERED":
                value = f"{{tampered[{rng.choice(TAMPERED_NAMES)}]}}"
            argv = _replace(argv, command.words, flag, value)
        mode = rng.choice(("local", "local", "local", "public", "allow"))
        cases.append((f"mutation|{len(cases)}|{name}|{mode}", ("mutation", name, mode, argv)))
    return cases


@pytest.mark.slow
def test_a_thousand_invocations_change_no_user_file(hostile, tmp_path):
    cases = big_cases()
    assert len(cases) >= 1000 and {c[1][1] for c in cases} >= set(COMMANDS) | set(WRITERS)
    hostile_before = snapshot(hostile.root)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "victim.txt").write_text("a file outside every output")
    victim_before = snapshot(victim)
    counts = {"ok": 0, "refused": 0}
    for index, (case_id, case) in enumerate(cases):
        tmp = tmp_path / f"c{index}"
        tmp.mkdir()
        try:
            if case[0] == "hazard":
                status = _run_hazard(case[1], case[2], tmp, victim, hostile, hostile_before)
            else:
                _, name, mode, argv = case
                argv = _fill(argv, hostile, tmp)
                if mode == "public":
                    argv = ["--public", *argv]
                elif mode == "allow":
                    argv = ["--allow-path", str(tmp), *argv]
                # (bases verify/info/push accept the damage only a loader sees: LOAD_TIME_ONLY, as above)
                verify_only = argv[argv.index("bases") + 1:][:1] in (["verify"], ["info"], ["push"]) \
                    if "bases" in argv else False
                load_time = any(str(hostile.tampered[n][0]) in argv for n in LOAD_TIME_ONLY)
                status, _ = check_call(argv, tmp, hostile.root, hostile_before,
                                       expect_refusal=not (verify_only and load_time))
        except (AssertionError, _Hang) as failure:
            raise AssertionError(f"case {case_id}: {failure}") from None
        counts["ok" if status == 0 else "refused"] += 1
        assert snapshot(victim) == victim_before, f"case {case_id} wrote through a link"
    print(f"\nbig fuzz run: {len(cases)} invocations, {counts['ok']} succeeded, {counts['refused']} refused with one "
          "line; 0 tracebacks, 0 hangs, 0 user files changed")
    assert counts["ok"] >= len(WRITERS) and counts["refused"] >= 900


def _run_hazard(name: str, hazard: str, tmp: Path, victim: Path, hostile, hostile_before) -> int:
    template, targets, subfolder = WRITERS[name]
    kind = "file" if name in FILE_OUTPUTS else "folder"
    out = tmp / ("out.safetensors" if kind == "file" else "out")
    fields = {**vars(hostile), "out": out, "work": tmp / "work"}
    argv = [part.format(**fields) if "{" in part else part for part in template]
    rerun = hazard.endswith("+rerun")
    hazard = hazard.removesuffix("+rerun")
    single: set[str] = set()
    if hazard == "edited" or rerun:  # an earlier run of the command, then the user's hazard, then the call
        status, _ = check_call(argv, tmp, hostile.root, hostile_before)
        if status == 0 and kind == "file":
            single = {out.relative_to(tmp).as_posix()}
        if hazard == "edited" and status == 0:
            edited = out if kind == "file" else next((out / rel for rel in targets if (out / rel).is_file()), None)
            if edited is not None:
                edited.write_bytes(b"edited by the user after the run")
                single = set()
    if hazard not in ("edited", "clean"):
        if kind == "file" and os.path.lexists(out):
            out.unlink()
            single = set()
        _plant(hazard, out, targets, subfolder, victim, kind)
    if hazard == "edited" and kind == "folder":
        _plant("beside", out, targets, subfolder, victim, kind)
    status, _ = check_call(argv, tmp, hostile.root, hostile_before, single_files=single)
    if hazard in ("link_file", "dangling", "link_dir") and kind == "file":
        assert status == 2  # never written through a link
    if hazard == "clean":
        assert status == 0, (name, "a valid call into a new folder, or a rerun into its own, must work")
    return status
