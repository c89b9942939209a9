"""The names of a vision tower's components, the same in the tabs, the command line, JSON and bases.

    component_label("head", 3, 1)       -> "L3H1"      attention head 1 of layer 3
    component_label("mlp", 2)           -> "L2.mlp"    the MLP of layer 2
    component_label("neuron", 2, 517)   -> "L2.n517"   neuron 517 of that MLP
    component_label("embedding")        -> "embedding" the class embedding term
    parse_label("L2.n517")              -> Component("neuron", 2, 517)

Layers, heads and neurons count from 0, as everywhere in clipscope (and in the papers' code).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from core.errors import ConfigError

KINDS = ("embedding", "mlp", "head", "neuron")
EMBEDDING = "embedding"

_PATTERNS = {
    "head": re.compile(r"L(\d+)H(\d+)"),
    "mlp": re.compile(r"L(\d+)\.mlp"),
    "neuron": re.compile(r"L(\d+)\.n(\d+)"),
}


class Component(NamedTuple):
    """kind: one of KINDS; layer: None for the embedding; index: the head or neuron, else None."""

    kind: str
    layer: int | None = None
    index: int | None = None


def component_label(kind: str, layer: int | None = None, index: int | None = None) -> str:
    """The one name of a component (see the module docstring)."""
    needs = {"embedding": (False, False), "mlp": (True, False), "head": (True, True), "neuron": (True, True)}
    if kind not in needs:
        raise ConfigError(f"unknown component kind {kind!r}; choose one of {', '.join(KINDS)}")
    for name, value, needed in (("layer", layer, needs[kind][0]), ("index", index, needs[kind][1])):
        if needed != (value is not None):
            raise ConfigError(f"a {kind} label {'needs' if needed else 'takes no'} {name}")
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    if kind == "embedding":
        return EMBEDDING
    if kind == "mlp":
        return f"L{int(layer)}.mlp"
    if kind == "head":
        return f"L{int(layer)}H{int(index)}"
    return f"L{int(layer)}.n{int(index)}"


def head_label(layer: int, head: int) -> str:
    return component_label("head", layer, head)


def mlp_label(layer: int) -> str:
    return component_label("mlp", layer)


def neuron_label(layer: int, neuron: int) -> str:
    return component_label("neuron", layer, neuron)


def parse_label(text: str) -> Component:
    """The component a label names; ConfigError for anything else."""
    value = (text or "").strip()
    if value == EMBEDDING:
        return Component("embedding")
    for kind, pattern in _PATTERNS.items():
        match = pattern.fullmatch(value)
        if match:
            numbers = [int(group) for group in match.groups()]
            return Component(kind, numbers[0], numbers[1] if len(numbers) > 1 else None)
    raise ConfigError(f"not a component label: {text!r}; use e.g. L3H1 (head), L2.mlp, L2.n517 (neuron) or embedding")
