"""clipscope: what each attention head and MLP neuron of a CLIP vision transformer does, in words.

The engine (no UI code). Start with `core.engine.models.load_clip`, `core.engine.trace.trace_vit` and
`core.engine.contributions.direct_effects`; `python -m core --help` lists the command line.
"""

__version__ = "0.1.0"
