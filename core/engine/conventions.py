"""The names of the final-LayerNorm conventions of `core.engine.contributions`, importable without torch
(a tab lays out its page, and a link is parsed, before any model is loaded)."""

CONVENTIONS = ("paper", "centered")  # the one list: the command line, the tabs, links and the engine import it

__all__ = ["CONVENTIONS", "check_convention"]


def check_convention(value, what: str = "convention") -> str:
    """`value` if it names a convention, else a one-line ConfigError listing them."""
    from core.errors import ConfigError

    if value not in CONVENTIONS:
        raise ConfigError(f"unknown {what} {str(value)[:40]!r}: choose one of {', '.join(CONVENTIONS)}")
    return value
