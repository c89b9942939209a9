"""core.budget: a public request's memory and time are estimated from its arguments and refused before any work when
over budget; heavy requests share one memory pool; a request past its deadline stops at its next progress step.
Also the bounded inputs that feed the budget (block list, text fields) and the memory-bounded PCA chunks."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import core.world  # noqa: F401  (registers the world image generator)
from core import budget, settings
from core.errors import ConfigError, LimitError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSCOPE_CACHE", str(tmp_path / "cache"))
    for name in ("SPACE_ID", "CLIPSCOPE_PUBLIC", "CLIPSCOPE_MODELS", "CLIPSCOPE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    yield
    settings.configure(public=None)


@pytest.fixture
def public():
    settings.configure(public=True)


@pytest.fixture(scope="module")
def toy():
    from core.engine.models import load_clip

    return load_clip("toy")


def test_issue_case_is_refused_before_any_work_with_what_to_lower(public, tmp_path):
    """Issue 20 item 4: k = 1,000 over 2,000 scenes took 1.0 -> 5.5 GB and 107 s; now a one-line refusal."""
    from core.explorer import neurons

    start = time.perf_counter()
    with budget.request_scope(), pytest.raises(LimitError) as caught:
        neurons.compute_statistics("toy", 2, neurons.WORLD, 2000, None, None, None, 1000, "normalise_texts")
    assert time.perf_counter() - start < 10  # no statistics were computed
    message = str(caught.value)
    assert "\n" not in message and "public server" in message
    assert "lower k or the number of world scenes" in message and "limit is" in message
    assert not (tmp_path / "cache" / "neuron-bases").exists()  # nothing written


def test_the_message_says_how_far_to_lower(public, toy):
    cost = budget.neuron_statistics(toy, images=2000, k=1000, texts=291, images_name="world scenes")
    fitted = cost.fits["k"]
    assert 100 < fitted < 1000
    with pytest.raises(LimitError, match=f"k at most {fitted:,}"):
        budget.check(cost)
    budget.check(budget.neuron_statistics(toy, images=2000, k=fitted, texts=291))  # that value is accepted
    with pytest.raises(LimitError):
        budget.check(budget.neuron_statistics(toy, images=2000, k=fitted + 1, texts=291))
    many = budget.neuron_statistics(toy, images=200_000, k=100, texts=291)
    assert 2000 < many.fits["images"] < 200_000


def test_costs_grow_with_every_argument_they_name(toy):
    base = budget.neuron_statistics(toy, images=500, k=100, texts=300)
    for bigger in (dict(images=1000, k=100, texts=300), dict(images=500, k=400, texts=300),
                   dict(images=500, k=100, texts=5000)):
        cost = budget.neuron_statistics(toy, **bigger)
        assert cost.seconds > base.seconds and cost.memory >= base.memory, bigger
    # the top-k deviation vectors alone: neurons x k x d_out float32
    info = toy.info
    assert base.memory >= info.d_mlp * 100 * info.d_out * 4
    span = budget.text_span(toy, images=200, heads=17, texts=300, per_head=10)
    assert budget.text_span(toy, images=2000, heads=17, texts=300, per_head=10).seconds > span.seconds
    assert budget.text_pool(toy, texts=20_000).seconds > budget.text_pool(toy, texts=200).seconds
    sd = budget.adversarial(toy, images=10, generator="sd")
    assert sd.seconds > budget.adversarial(toy, images=10, generator="world").seconds


def test_local_mode_computes_but_never_refuses(toy):
    cost = budget.neuron_statistics(toy, images=200_000, k=1000, texts=1_000_000)
    assert cost.seconds > budget.PUBLIC_REQUEST_SECONDS
    assert budget.check(cost) is cost
    with budget.request_scope() as request:
        budget.admit(cost)
        assert request.reserved == 0 and request.deadline is None


def test_heavy_requests_share_one_memory_pool(public, monkeypatch):
    monkeypatch.setattr(budget, "HEAVY_WAIT_SECONDS", 0.3)
    big = budget.Cost("a big thing", int(budget.PUBLIC_HEAVY_BYTES * 0.6), 1.0, "the size")
    small = budget.Cost("a small thing", budget.HEAVY_BYTES // 2, 1.0, "nothing")
    inside, release = threading.Event(), threading.Event()

    def hold():
        with budget.request_scope():
            budget.admit(big)
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    try:
        with budget.request_scope(), pytest.raises(LimitError, match="busy with other large requests"):
            budget.admit(big)  # 2 x 0.6 of the pool: refused after the wait
        with budget.request_scope():
            budget.admit(small)  # small requests reserve nothing
        assert budget.POOL.used == big.memory
    finally:
        release.set()
        holder.join()
    assert budget.POOL.used == 0  # released when the request ended
    with budget.request_scope():
        budget.admit(big)  # room again


def test_a_waiting_request_gets_room_when_the_other_ends(public, monkeypatch):
    monkeypatch.setattr(budget, "HEAVY_WAIT_SECONDS", 5.0)
    big = budget.Cost("a big thing", int(budget.PUBLIC_HEAVY_BYTES * 0.6), 1.0, "the size")
    inside = threading.Event()

    def hold():
        with budget.request_scope():
            budget.admit(big)
            inside.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    start = time.perf_counter()
    with budget.request_scope():
        budget.admit(big)
    assert 0.2 < time.perf_counter() - start < 5
    holder.join()


def test_a_request_past_its_deadline_stops_at_its_next_step(public):
    from core.explorer.common import progress_or_silent

    progress = progress_or_silent(None)
    with budget.request_scope(deadline_seconds=0.2):
        steps = []
        with pytest.raises(LimitError, match="ran past the .* s a request may take"):
            for step in progress.tqdm(range(100), desc="work"):
                steps.append(step)
                time.sleep(0.05)
        assert 2 <= len(steps) < 20
        progress(0.5, desc="cleanup")  # said once: reporting after the stop does not raise again


def test_no_deadline_locally():
    from core.explorer.common import progress_or_silent

    with budget.request_scope(deadline_seconds=0.0):
        assert list(progress_or_silent(None).tqdm(range(3))) == [0, 1, 2]


def test_pca_chunks_bound_memory_without_changing_any_result(monkeypatch):
    """k = 1,000 made 256-neuron chunks of float64 Gram matrices (4 GB); chunks are now sized by bytes, and each
    neuron's PC and share are bit-identical whatever the chunk."""
    from core.neurons import stats

    deviations = torch.randn(40, 60, 12, generator=torch.Generator().manual_seed(0))
    order = torch.stack([torch.randperm(60, generator=torch.Generator().manual_seed(i)) for i in range(40)])
    whole = stats.first_principal_components(deviations, order)
    assert stats.pca_chunk(60, 12) >= 40  # one chunk
    assert stats.pca_chunk(1000, 96) * stats.pca_bytes_per_neuron(1000, 96) <= stats.PCA_CHUNK_BYTES
    monkeypatch.setattr(stats, "PCA_CHUNK_BYTES", stats.pca_bytes_per_neuron(60, 12) * 3)
    assert stats.pca_chunk(60, 12) == 3
    chunked = stats.first_principal_components(deviations, order)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


# ---------------------------------------------------------------- bounded inputs

def test_block_list_is_bounded_in_characters_words_and_word_length(public):
    from core.explorer.adversarial import read_block

    assert read_block("pyramid, cone,pyramid , ") == ("pyramid", "cone")  # duplicates dropped, order kept
    assert len(read_block(", ".join(f"w{i}" for i in range(200)))) == 200
    start = time.perf_counter()
    for raw, pattern in [(", ".join(f"w{i}" for i in range(201)), "201, over the limit of 200 words"),
                         ("x," * 6000, "too long: 12,000 characters, at most 10,000"),
                         ("y" * 101, "at most 100 characters"),
                         ("a," * 2_750_000, "too long")]:  # 5.5 MB: the issue's list
        with pytest.raises(ConfigError, match=pattern):
            read_block(raw)
    assert time.perf_counter() - start < 2  # refused by its length, not by its cost


def test_block_list_bounds_are_wider_locally():
    from core.explorer.adversarial import read_block

    assert len(read_block(", ".join(f"w{i}" for i in range(5000)))) == 5000


def test_text_fields_are_refused_by_length_before_they_are_read(public):
    from core.explorer import access, common

    huge = "a red circle\n" * 200_000  # 2.6 MB
    start = time.perf_counter()
    with pytest.raises(LimitError, match="The text box is too long"):
        common.read_texts(huge)
    with pytest.raises(LimitError, match="too long"):
        access.check_bases_source("org/name@" + "0" * 1000)
    with pytest.raises(LimitError, match="too long"):
        access.check_server_path("/" + "d/" * 5000, "image folder")
    with pytest.raises(ConfigError, match="must be text"):
        access.check_length(["a"], "The layers")
    assert time.perf_counter() - start < 1
    assert common.read_texts("a\nb") == ["a", "b"]
