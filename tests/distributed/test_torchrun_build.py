"""`bases build` under torchrun (2 gloo processes on the CPU, launched as a subprocess) equals one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.artifacts.store import load_artifact, verify_artifact

ROOT = Path(__file__).resolve().parents[2]
BUILD = ["bases", "build", "--model", "toy", "--images", "world:192:1", "--texts", "toy", "--layers", "3",
         "--neuron-layers", "1", "2", "--rank", "24", "--per-head", "8", "--k", "16", "--batch-size", "16",
         "--shard-size", "32"]

pytestmark = pytest.mark.slow


def _env(tmp: Path, **extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPSCOPE_CACHE": str(tmp / "cache"), **extra}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args: list[str], tmp: Path, processes: int = 1, entry: list[str] | None = None, **env) -> subprocess.CompletedProcess:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
              if processes > 1 else [sys.executable])
    entry = entry or ["-m", "core"]
    return subprocess.run(launch + entry + args, cwd=ROOT, env=_env(tmp, **env), capture_output=True, text=True,
                          timeout=300)


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    _ok(_run(BUILD + ["--out", str(tmp / "bases")], tmp))
    return load_artifact(tmp / "bases")


def assert_same_bases(a, b) -> None:
    """Identical TextSpan texts and top-k image ids, floats within 1e-5 relative, the same PC signs."""
    assert a.names("tensors") == b.names("tensors")
    for group in a.names("tensors"):
        x, y = a.tensors(group), b.tensors(group)
        assert x.keys() == y.keys()
        for name in x:
            if x[name].is_floating_point():
                scale = y[name].abs().max().clamp_min(1e-12)
                assert ((x[name] - y[name]).abs().max() / scale) <= 1e-5, (group, name)
            else:
                assert torch.equal(x[name], y[name]), (group, name)
    for layer in (1, 2):
        pcs_a, pcs_b = a.tensors(f"neurons_L{layer}")["pcs"].float(), b.tensors(f"neurons_L{layer}")["pcs"].float()
        assert bool(((pcs_a * pcs_b).sum(-1) > 0.99).all())  # the same sign for every neuron's PC
    assert a.table("textspan") == b.table("textspan")


def test_two_processes_build_the_single_process_artifact(single, tmp_path):
    result = _run(BUILD + ["--out", str(tmp_path / "bases"), "--work-dir", str(tmp_path / "work")], tmp_path, 2)
    _ok(result)
    assert verify_artifact(tmp_path / "bases") == []
    double = load_artifact(tmp_path / "bases")
    assert_same_bases(single, double)
    manifest = double.manifest
    assert manifest["metrics"]["world_size"] == 2 and single.manifest["metrics"]["world_size"] == 1
    assert manifest["algorithms"]["sharding"]["shards"] == 6 and manifest["algorithms"]["sharding"]["shard_size"] == 32
    assert manifest["image_set"] == single.manifest["image_set"]
    assert not (tmp_path / "work").exists()  # partials are removed once the artifact is written


def test_a_killed_rank_leaves_no_complete_artifact_and_a_rerun_resumes(single, tmp_path):
    out, work = tmp_path / "bases", tmp_path / "work"
    args = BUILD + ["--out", str(out), "--work-dir", str(work), "--timeout", "60"]
    died = _run(args, tmp_path, 2, entry=[str(ROOT / "tests/distributed/rank_faults.py")], CLIPSCOPE_TEST_FAULT="die")
    assert died.returncode != 0
    assert "exitcode" in died.stderr and "3" in died.stderr  # torchrun names the rank that failed
    assert not (out / "manifest.json").exists()
    assert verify_artifact(out)  # not a complete artifact
    kept = sorted(p.name for p in work.rglob("shard*.safetensors"))
    assert kept  # the shards finished before the failure
    resumed = _run(args, tmp_path, 2)
    _ok(resumed)
    assert "read back from an earlier run" in resumed.stderr
    assert_same_bases(single, load_artifact(out))


def test_ranks_that_disagree_on_the_text_pool_refuse_to_build(tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("".join(f"a photo of {n} red circles\n" for n in range(40)))
    result = _run(BUILD + ["--out", str(tmp_path / "bases")], tmp_path, 2,
                  entry=[str(ROOT / "tests/distributed/rank_faults.py")], CLIPSCOPE_TEST_FAULT=f"other_texts:{other}")
    assert result.returncode != 0
    assert "disagree on the text_pool" in result.stderr and "ranks 0" in result.stderr
    assert not (tmp_path / "bases" / "manifest.json").exists()


def test_more_processes_than_shards_leave_one_idle_and_build_the_same_bytes(tmp_path):
    """Issue 20: 240 images make one shard of the default size; with 2 processes rank 1 stays idle (it still
    takes part in every merge, with zeros), and the artifact has the same bytes as one process's."""
    build = ["bases", "build", "--model", "toy", "--images", "world:240:17", "--texts", "toy", "--layers", "3",
             "--neuron-layers", "2", "--rank", "16", "--per-head", "4", "--k", "8", "--batch-size", "16"]
    _ok(_run(build + ["--out", str(tmp_path / "one")], tmp_path))
    two = _run(build + ["--out", str(tmp_path / "two"), "--work-dir", str(tmp_path / "work")], tmp_path, 2)
    _ok(two)
    assert "stay idle" in two.stderr
    one, double = load_artifact(tmp_path / "one"), load_artifact(tmp_path / "two")
    assert double.manifest["algorithms"]["sharding"]["shards"] == 1 and double.manifest["metrics"]["world_size"] == 2
    assert one.names("tensors") == double.names("tensors")
    for group in one.names("tensors"):
        a, b = one.tensors(group), double.tensors(group)
        assert a.keys() == b.keys() and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a), group
    assert one.table("textspan") == double.table("textspan")
    assert not (tmp_path / "work").exists()
