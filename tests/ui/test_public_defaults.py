"""Every tab's default action, through the Gradio API, on a server in public mode with no model settings: the
values the page starts with, only an example image where a tab needs an image. A public server must never
refuse what its own tabs start on (issue 21: the Adversarial tab's toy-biased default was refused)."""

from __future__ import annotations

import json

import pytest

from tests.browser import ROOT, app_server

pytestmark = pytest.mark.slow  # the Adversarial tab's default run draws 900 scenes (tens of seconds on 2 cores)

# tab -> (endpoint, the only inputs not left at the page's values)
DEFAULT_ACTIONS = {
    "decomposition": ("/decompose", {"image_id": "example:0"}),
    "heads": ("/head_texts", {}),
    "neurons": ("/show_neuron", {}),
    "circuits": ("/show_circuit", {}),
    "segmentation": ("/segment", {"image_id": "example:0"}),
    "adversarial": ("/generate", {}),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    env = {"CLIPSCOPE_PUBLIC": "1", "CLIPSCOPE_MODELS": "", "CLIPSCOPE_MODEL": "",  # the shipped defaults
           "CLIPSCOPE_CACHE": str(tmp_path_factory.mktemp("cache"))}
    with app_server(ROOT / "app.py", env) as url:
        yield Client(url, verbose=False)


def test_the_defaults_are_the_pages(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    generate = {p["parameter_name"]: p["parameter_default"] for p in api["/generate"]["parameters"]}
    assert generate["spec"] == "toy-biased" and generate["images"] == 100 and generate["baselines"] is True
    assert {tab for tab, (endpoint, _) in DEFAULT_ACTIONS.items() if endpoint in api} == set(DEFAULT_ACTIONS)


@pytest.mark.parametrize("tab", list(DEFAULT_ACTIONS))
def test_each_tab_default_action_works_in_public_mode(client, tab):
    endpoint, given = DEFAULT_ACTIONS[tab]
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]["parameters"]
    empty = {p["parameter_name"]: "" if p["component"] == "Textbox" else None  # a box the page leaves empty
             for p in parameters if not p["parameter_has_default"]}
    result = client.predict(api_name=endpoint, **{**empty, **given})  # raises on a gr.Error, e.g. a refused model
    text = json.dumps(result, default=str)
    model = "toy-biased" if tab == "adversarial" else "toy"
    assert f"`{model}`" in text or f"model {model}" in text, (tab, text[:400])  # provenance names the model
    assert "not available on this public server" not in text
