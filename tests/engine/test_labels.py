"""Component labels: one name per component, parsed back to the same component."""

import pytest

from core.engine.labels import Component, component_label, head_label, mlp_label, neuron_label, parse_label
from core.errors import ConfigError


def test_labels_name_every_kind_of_component_and_parse_back():
    cases = {("head", 3, 1): "L3H1", ("mlp", 2, None): "L2.mlp", ("neuron", 2, 517): "L2.n517",
             ("embedding", None, None): "embedding", ("head", 11, 10): "L11H10"}
    for (kind, layer, index), label in cases.items():
        assert component_label(kind, layer, index) == label
        assert parse_label(label) == Component(kind, layer, index)
    assert (head_label(3, 1), mlp_label(2), neuron_label(2, 517)) == ("L3H1", "L2.mlp", "L2.n517")


@pytest.mark.parametrize("args", [("head", 3), ("mlp", 2, 1), ("neuron", None, 4), ("embedding", 0), ("attn", 1, 2),
                                  ("head", -1, 0), ("head", 1.5, 0), ("neuron", True, 1)])
def test_wrong_components_are_refused(args):
    with pytest.raises(ConfigError):
        component_label(*args)


@pytest.mark.parametrize("text", ["", "L3", "L3H", "l3h1", "L3.mlp2", "L2.n", "3H1", "L2 .n5", "embeddings", None])
def test_labels_that_name_nothing_are_refused(text):
    with pytest.raises(ConfigError, match="not a component label"):
        parse_label(text)


def test_surrounding_spaces_are_forgiven():
    assert parse_label(" L2.n517\n") == Component("neuron", 2, 517)
