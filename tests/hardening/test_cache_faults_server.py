"""Issue 20 item 7 on a real server: with a read-only or a full $CLIPSCOPE_CACHE the app starts (it used to die with
a traceback while building the tabs, which wrote the example pictures) and every tab answers, with a warning in the
log and never an 'Unexpected ...Error'."""

from __future__ import annotations

import json

import pytest

from tests.hardening.faults import full_folder, readonly_folder
from tests.hardening.server import public_server

pytestmark = pytest.mark.slow

WORLD = "generated world (held-out scenes)"
# One or two views of every tab, each from a fresh session (the same calls as tests/ui/test_api.py's).
CALLS = [
    ("/decompose", (), dict(spec="toy", image=None, image_id="example:0", texts="a green cross\na red circle",
                            convention="paper")),
    ("/head_texts", (), dict(spec="toy", layer=3, head=1, bases="", prefer="bases")),
    ("/explain_image", (), dict(spec="toy", image=None, image_id="example:2", texts="a white cross\na pink background",
                                layer=3, head=1, pool_file=None, convention="paper", scale="shared")),
    ("/retrieve", (), dict(spec="toy", image=None, image_id="example:2", layer=3, head=1, source=WORLD, folder="",
                           uploads=None, k=4, metric="cosine", convention="paper")),
    ("/compute_bases", (), dict(spec="toy", layer=2, source="generated world", n_scenes=30, folder="", pool_file=None,
                                pool_path="", k=5, dictionary="normalise_texts")),
    ("/concepts", (), dict(spec="toy", bases="", layer=2, image=None, image_id="world:4:7", top=5, threshold=1.0)),
    ("/segment", ("toy", None, "example:0", "a green cross\na pink background", "", "heads", "none",
                  "each method's rule", 0.5), {}),
    ("/generate", ("toy-biased", "square", "triangle", "", None, 5, 0.9, "world", 4, 1, False, 0, "", "", "", ""), {}),
]


@pytest.mark.parametrize("fault", ["readonly", "full"])
def test_the_app_starts_and_every_tab_answers(fault, tmp_path):
    from gradio_client import Client

    if fault == "readonly":
        context, env = readonly_folder(tmp_path), {}
    else:
        context = full_folder(tmp_path)
    with context as made:
        cache, how = (made[0], made[1]) if fault == "readonly" else (made[0], made[2])
        env = {} if fault == "readonly" else made[1]
        with public_server(tmp_path / "tmp", cache, env) as server:
            answers = {}
            for endpoint, args, kwargs in CALLS:
                client = Client(server.url, verbose=False)
                try:
                    answers[endpoint] = json.dumps(client.predict(*args, api_name=endpoint, **kwargs), default=str)
                except Exception as err:  # noqa: BLE001 - every failure is the finding
                    answers[endpoint] = f"FAILED: {err}"
            download = Client(server.url, verbose=False)
            download.predict(*CALLS[-1][1], api_name="/generate")
            archive = download.predict(api_name="/download")
            log = server.log_text()
    failed = {endpoint: answer[:300] for endpoint, answer in answers.items() if answer.startswith("FAILED")}
    assert not failed, (how, failed)
    assert str(archive).endswith(".zip")
    assert "clipscope cache" in log and "skipped" in log, (how, log[-2000:])  # the warning
    assert "Traceback" not in log and "Unexpected" not in log, (how, log[-3000:])
    assert "computed in this session" in answers["/compute_bases"]
