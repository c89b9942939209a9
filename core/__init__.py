"""clipscope: what each attention head and MLP neuron of a CLIP vision transformer does, in words.

The names a researcher needs first, imported on first use (`import core` loads neither torch nor open_clip):

    bundle = core.load_clip("toy")                          # a model spec: docs/models.md
    result = core.decompose_image(bundle, image, texts)     # direct effects of layers, heads, tokens onto texts
    images = core.parse_image_set("path/to/folder")         # an ImageSet: folder, world:N, hf:ORG/NAME@SHA:SPLIT
    bases = core.model_bases(bundle)                        # precomputed bases (load_bases: any folder or Hub repo)
    core.head_texts_from_bases(bases, "L3H1")               # a head's TextSpan texts
    core.neuron_terms_from_bases(bases, "L2.n5")            # a neuron's sparse text decomposition
    core.segment_image(bundle, image, texts)                # zero-shot segmentation maps
    core.image_second_order(bundle, image, layer=2)         # second-order effects of a layer's neurons
    core.example_images()                                   # the app's example scenes (paths)

Each name lives in a concept package (`core.engine`, `core.heads`, `core.neurons`, `core.segmentation`,
`core.artifacts`, `core.world`, ...), which are also reachable as attributes; `python -m core --help` (or
`clipscope --help`) lists the command line. Package map: docs/architecture.md.
"""

import importlib as _importlib

__version__ = "0.1.0"

# name -> the module that defines it (each is also in its package's `__all__`)
_EXPORTS: dict[str, str] = {
    "load_clip": "core.engine.models",
    "ClipBundle": "core.engine.models",
    "decompose_image": "core.engine.decomposition",
    "ImageDecomposition": "core.engine.decomposition",
    "ImageSet": "core.engine.imagesets",
    "parse_image_set": "core.engine.imagesets",
    "load_bases": "core.artifacts.hub",
    "model_bases": "core.artifacts.hub",
    "head_texts_from_bases": "core.heads.bases",
    "neuron_terms_from_bases": "core.neurons.bases",
    "segment_image": "core.segmentation.segment",
    "ImageSegmentation": "core.segmentation.segment",
    "image_second_order": "core.neurons.texts",
    "second_order_effects": "core.neurons.second_order",
    "example_images": "core.world.examples",
}
# the concept packages, reachable as attributes (the front doors `core.cli` and `core.explorer` are imported by name)
_SUBPACKAGES = ("adversarial", "artifacts", "distributed", "engine", "errors", "guards", "heads", "neurons",
                "segmentation", "settings", "world")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # resolved once
        return value
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))
