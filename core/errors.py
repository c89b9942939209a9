"""Every error the engine raises on purpose.

Each subclasses a built-in so generic callers can still catch it, and each
message says what was wrong and what to do instead. The CLI turns a
`CoreError` into a one-line message and a non-zero exit; the UI turns it into
a `gr.Error`.
"""


class CoreError(Exception):
    """Base of every deliberate error of the engine."""


class UnknownModelError(CoreError, ValueError):
    """A model spec names no architecture, pretrained tag or file we know."""


class UnsupportedModelError(CoreError, ValueError):
    """The model exists but uses a feature the decomposition does not model."""


class WeightsError(CoreError, OSError):
    """Weights could not be obtained or read (offline, missing, corrupt)."""


class ImageError(CoreError, ValueError):
    """An image file or array that cannot be used."""


class TextError(CoreError, ValueError):
    """Empty, malformed or mismatched texts or text pools."""


class IndexRangeError(CoreError, IndexError):
    """A layer, head, neuron or token index outside the model."""


class DatasetError(CoreError, ValueError):
    """An image folder or labels table without the expected layout."""


class ConfigError(CoreError, ValueError):
    """Invalid parameters for an algorithm or generator."""


class BasesError(CoreError, ValueError):
    """A precomputed artifact that is malformed, tampered or for another model."""


class LimitError(ConfigError):
    """A size beyond the bounds of core.guards (counts, lengths, pixels, bytes)."""


class NotAllowedError(CoreError, PermissionError):
    """An input this server does not accept: public mode, the model allow-list or the allowed folders."""


class ModelNotAllowedError(NotAllowedError):
    """A model spec outside the allow-list, random weights or a local file, in public mode."""


class PathNotAllowedError(NotAllowedError):
    """A server path named in public mode, or outside the folders given with --allow-path."""


class OutputError(CoreError, OSError):
    """An output that cannot be written, or that would replace files the tool did not write."""


def check_index(name: str, value, size: int) -> int:
    """`value` as an index in 0..size-1, else IndexRangeError naming the range. The one index check of the suite
    (the command line, the tabs, the library): a whole float from a UI number box (3.0) counts as 3; None or an
    empty box says to choose one; booleans, fractions and text are refused."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise IndexRangeError(f"Choose a {name}.")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        raise IndexRangeError(f"{name} must be a whole number, got {value!r}")
    if not isinstance(value, int):
        try:
            value = int(value.__index__())  # numpy integers
        except (AttributeError, TypeError):
            raise IndexRangeError(f"{name} must be a whole number, got {value!r}"[:200]) from None
    if not 0 <= value < size:
        raise IndexRangeError(f"{name} {value} is out of range: this model has {size} ({name} 0..{size - 1})")
    return value
