"""The names of the final-LayerNorm conventions of `core.engine.contributions`, importable without torch
(a tab lays out its page, and a link is parsed, before any model is loaded)."""

CONVENTIONS = ("paper", "centered")
