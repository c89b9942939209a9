"""clipscope: what each attention head and MLP neuron of a CLIP vision transformer does, in words.

The engine (no UI code). Start with `core.models.load_clip`, `core.trace.trace_vit` and
`core.contributions.direct_effects`; `python -m core --help` lists the command line.
"""

__version__ = "0.1.0"
