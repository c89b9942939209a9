"""Device policy on the command line: --device, $CLIPSCOPE_DEVICE, and results that say which device made them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.cli import build_parser, main
from core.cli.common import model_line
from core.engine.models import load_clip

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "CLIPSCOPE_MODEL_CONFIGS": str(ROOT / "tests" / "model_configs"), "HF_HUB_OFFLINE": "1"}


def _decompose(scene_png, *extra):
    return ["decompose", "--model", "Tiny-ViT/none", "--image", str(scene_png), "--text", "a", *extra]


def test_every_command_that_loads_a_model_takes_device():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        options = {option for action in sub._actions for option in action.option_strings}
        if "--model" in options:
            assert "--device" in options, name
    bases_build = commands["bases"]._subparsers._group_actions[0].choices["build"]
    toy_evaluate = commands["toy"]._subparsers._group_actions[0].choices["evaluate"]
    for sub in (bases_build, toy_evaluate):
        assert "--device" in {option for action in sub._actions for option in action.option_strings}


def test_results_say_which_device_made_them(scene_png, capsys):
    assert main(_decompose(scene_png, "--device", "cpu", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"
    assert main(_decompose(scene_png, "--device", "cpu")) == 0
    assert "on cpu" in capsys.readouterr().out.splitlines()[0]
    bundle = load_clip("Tiny-ViT/none", device="cpu")
    assert bundle.device == torch.device("cpu") and model_line(bundle).endswith("on cpu")


def test_device_defaults_to_the_environment(scene_png):
    out = subprocess.run([sys.executable, "-m", "core", *_decompose(scene_png, "--json")], capture_output=True,
                         text=True, env={**ENV, "CLIPSCOPE_DEVICE": "cpu"}, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["device"] == "cpu"


@pytest.mark.parametrize(("device", "message"), [("tpu", "unknown device 'tpu'"), ("meta", "unsupported device"),
                                                 ("cuda:99", "")])
def test_bad_devices_are_one_line_errors(scene_png, capsys, device, message):
    if device == "cuda:99":
        message = "does not exist" if torch.cuda.is_available() else "no CUDA GPU"
    assert main(_decompose(scene_png, "--device", device)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
