"""The app over its HTTP API (gradio_client), as a script or an attacker would use it, on a public-mode server:
every endpoint works on its own, public mode refuses server paths and other models, and malformed input gets a
clear message while the server keeps answering."""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from pathlib import Path

import httpx
import pytest

from tests.browser import ROOT, app_server

pytestmark = pytest.mark.slow

WORLD = "generated world (held-out scenes)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    env = {"CLIPSCOPE_PUBLIC": "1", "CLIPSCOPE_MODELS": "toy", "CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_CACHE": str(cache)}
    with app_server(ROOT / "app.py", env) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Uploads Gradio itself cannot decode, and text pools that are not what they claim."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "text.png").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "huge.png").write_bytes(_png_header(20000, 20000))
    import io

    import numpy as np
    from PIL import Image

    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole, "PNG")
    (folder / "truncated.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (folder / "latin1.txt").write_bytes(b"caf\xe9\n\xff\xfe\x00")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blank.txt").write_text("\n \n\t\n")
    return folder


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb costs nothing to send)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\x00" * (width * 3 + 1) * 8)  # a few rows; the header is what counts
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


# Valid calls of every endpoint: each one works on its own, from a fresh session, with no earlier call.
VALID = {
    "/decompose": dict(spec="toy", image=None, image_id="example:0", texts="a green cross\na red circle",
                       convention="paper"),
    "/head_texts": dict(spec="toy", layer=3, head=1, bases="", prefer="bases"),
    "/compute_textspan": dict(spec="toy", source=WORLD, folder="", uploads=None, n_images=20, per_head=3,
                              pool_file=None, layer=3, head=1),
    "/explain_image": dict(spec="toy", image=None, image_id="example:2", texts="a white cross\na pink background",
                           layer=3, head=1, pool_file=None, convention="paper", scale="shared"),
    "/retrieve": dict(spec="toy", image=None, image_id="example:2", layer=3, head=1, source=WORLD, folder="",
                      uploads=None, k=4, metric="cosine", convention="paper"),
    "/load_bases": dict(spec="toy", bases="", layer=2),
    "/compute_bases": dict(spec="toy", layer=2, source="generated world", n_scenes=30, folder="", pool_file=None,
                           pool_path="", k=5, dictionary="normalise_texts"),
    "/show_neuron": dict(spec="toy", bases="", layer=2, neuron=5),
    "/neuron_on_image": dict(spec="toy", bases="", layer=2, neuron=5, image=None, image_id="example:0"),
    "/concepts": dict(spec="toy", bases="", layer=2, image=None, image_id="example:0", top=5, threshold=1.0),
    "/search_neurons": dict(spec="toy", bases="", layer=2, text="a red circle", top=5),
    "/show_circuit": dict(spec="toy", bases="", layer=1, neuron=5, kind="weight edges (no images)", target="", top=5),
    "/measure_ablation": dict(spec="toy", bases="", layer=2, neuron=5, target=""),
    "/in_edges": dict(spec="toy", bases="", head="2.1", target="", top=5),
}
PUBLIC_REFUSED = {"/spurious": dict(spec="toy", folder="/tmp", heads="3.1", classnames="", trials=1,
                                    convention="paper")}


def _error(client, endpoint: str, **kwargs) -> str | None:
    """The error message of a call (None when it succeeded)."""
    try:
        client.predict(api_name=endpoint, **kwargs)
    except Exception as err:  # noqa: BLE001 - the message is what we check
        return str(err)
    return None


def _clear(message: str) -> bool:
    return (bool(message.strip()) and message.strip() != "Error" and "Traceback" not in message
            and "has not enabled verbose error reporting" not in message)


def test_every_endpoint_works_on_its_own(server):
    from gradio_client import Client

    api = Client(server, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"]
    # The segmentation and adversarial tabs' endpoints are exercised by tests/segmentation and tests/adversarial.
    other_tabs = {"/segment", "/generate", "/download"}
    endpoints = set(api) - {name for name in api if name.startswith("/load_example")}
    assert set(VALID) | set(PUBLIC_REFUSED) == endpoints - other_tabs
    for endpoint, kwargs in VALID.items():
        result = Client(server, verbose=False).predict(api_name=endpoint, **kwargs)  # a new session each time
        text = json.dumps(result, default=str)
        assert "model toy" in text or "(`toy`)" in text or "(`toy`," in text, (endpoint, text[:300])  # provenance
    concepts = Client(server, verbose=False).predict(api_name="/concepts", **VALID["/concepts"])
    assert concepts[0]["data"] and concepts[1]["data"]  # activated neurons and words, with no /load_bases first


def test_public_mode_refuses_server_paths_and_other_models(client, server):
    for endpoint, kwargs in [
        ("/spurious", PUBLIC_REFUSED["/spurious"]),
        ("/show_neuron", {**VALID["/show_neuron"], "bases": "/etc"}),
        ("/show_neuron", {**VALID["/show_neuron"], "bases": "/nonexistent/folder"}),
        ("/compute_bases", {**VALID["/compute_bases"], "pool_path": "/etc/hostname"}),
        ("/compute_bases", {**VALID["/compute_bases"], "pool_path": "/nonexistent.txt"}),
        ("/compute_bases", {**VALID["/compute_bases"], "source": "image folder on this machine", "folder": "/etc"}),
        ("/compute_textspan", {**VALID["/compute_textspan"], "source": "image folder on this machine",
                               "folder": "/etc"}),
        ("/retrieve", {**VALID["/retrieve"], "source": "image folder on this machine", "folder": "/usr/share"}),
        ("/head_texts", {**VALID["/head_texts"], "spec": "ViT-B-32/none"}),
        ("/head_texts", {**VALID["/head_texts"], "spec": "ViT-B-32//etc/passwd"}),
        ("/decompose", {**VALID["/decompose"], "spec": "Toy-ViT-S8-64/none"}),
    ]:
        message = _error(client, endpoint, **kwargs)
        assert message is not None and _clear(message), (endpoint, kwargs, message)
        assert "root:" not in message and "No such file" not in message and "not found" not in message
    # the same answer whether the path exists or not: nothing is probed
    exists = _error(client, "/show_neuron", **{**VALID["/show_neuron"], "bases": "/etc"})
    missing = _error(client, "/show_neuron", **{**VALID["/show_neuron"], "bases": "/nonexistent"})
    assert exists == missing
    # a raw API call naming a server file as an "upload" is refused by Gradio, whether the file exists or not
    answers = {_raw_error(server, "decompose", ["toy", {"path": path, "meta": {"_type": "gradio.FileData"}}, "",
                                                "a", "paper"]).replace(path, "PATH")
               for path in ("/etc/passwd", "/etc/nonexistent")}
    assert len(answers) == 1 and "not uploaded by a user" in answers.pop()


def _raw_error(server: str, endpoint: str, data: list) -> str:
    base = server.rstrip("/") + "/gradio_api/call/"
    event = httpx.post(base + endpoint, json={"data": data}, timeout=60).json()["event_id"]
    body = httpx.get(base + endpoint + "/" + event, timeout=120).text
    assert "event: error" in body, body[-500:]
    return body.split("data:", 1)[1]


def fuzz_cases(bad: Path) -> list[tuple[str, dict]]:
    """Malformed inputs: each one replaces one argument of a valid call."""
    from gradio_client import handle_file

    images = [handle_file(str(bad / name)) for name in ("text.png", "empty.png", "huge.png", "truncated.png")]
    pools = [handle_file(str(bad / name)) for name in ("latin1.txt", "empty.txt", "blank.txt")]
    strings = ["", " ", "\x00", "\n\n\n", "a" * 5000, "<script>alert(1)</script>", "../../etc/passwd", "%s%n{0}{x}",
               "😀" * 50, "\u202e\u200b"]
    numbers = [-1, 10**9, 3.5, "abc", None, True, -10**12]
    ids = ["example:6", "example:-1", "world:1", "world:-1:0", "world:99999999999:1", "upload", "file:/etc/passwd",
           "example:0 ", "EXAMPLE:0", "world:1:1:1"]
    cases: list[tuple[str, dict]] = []
    for endpoint, valid in VALID.items():
        for name, value in valid.items():
            if name == "spec":
                candidates = ["", "nope", "toy/none", "hf-hub:evil/model"]
            elif name in ("image",):
                candidates = images
            elif name == "image_id":
                candidates = ids
            elif name in ("pool_file",):
                candidates = pools
            elif name in ("texts", "text"):
                candidates = strings + ["\n".join(f"t{i}" for i in range(40))]
            elif name in ("bases",):
                candidates = ["org/name@main", "org/name", "x" * 400, "/"]
            elif name in ("layer", "head", "neuron", "top", "k", "n_images", "per_head", "n_scenes", "threshold"):
                candidates = numbers + ([0, float(1e-9)] if name == "threshold" else [])
            elif name in ("convention", "scale", "prefer", "source", "metric", "dictionary"):
                candidates = ["", "bogus", "PAPER"]
            elif name in ("uploads",):
                candidates = [[images[0]], [images[1], images[2]]]
            else:
                candidates = ["/etc", "", "\x00"]
            cases += [(endpoint, {**valid, name: candidate}) for candidate in candidates]
    return cases


def test_fuzz_malformed_input_gets_a_clear_message_and_the_server_keeps_answering(client, bad_files):
    cases = fuzz_cases(bad_files)
    assert len(cases) >= 100
    failures, refused = [], 0
    for n, (endpoint, kwargs) in enumerate(cases):
        message = _error(client, endpoint, **kwargs)
        if message is not None:
            refused += 1
            if not _clear(message):
                failures.append((endpoint, {k: str(v)[:40] for k, v in kwargs.items()}, message[:200]))
        if n % 25 == 24:  # the server still answers a valid request
            assert _error(client, "/head_texts", **VALID["/head_texts"]) is None
    assert not failures, failures[:10]
    assert refused >= len(cases) // 2  # most malformed inputs are refused, not silently accepted
    assert _error(client, "/search_neurons", **VALID["/search_neurons"]) is None


def test_bad_uploads_say_what_was_wrong(client, bad_files):
    from gradio_client import handle_file

    expected = {"text.png": "not an image file", "empty.png": "not an image file", "huge.png": "too large",
                "truncated.png": "could not"}
    for name, words in expected.items():
        message = _error(client, "/decompose", **{**VALID["/decompose"], "image_id": "",
                                                  "image": handle_file(str(bad_files / name))})
        assert message is not None and words in message and name in message, (name, message)


def test_concurrent_clients_all_get_answers(server):
    """A small version of bench/load.py: 4 clients at once, every endpoint, no dropped connection."""
    import threading

    from gradio_client import Client

    errors = []

    def run(index: int) -> None:
        client = Client(server, verbose=False)
        for endpoint, kwargs in itertools.islice(itertools.cycle(
                [(e, k) for e, k in VALID.items() if e not in ("/compute_textspan", "/compute_bases")]), index, index + 6):
            message = _error(client, endpoint, **kwargs)
            if message is not None:
                errors.append((endpoint, message))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
