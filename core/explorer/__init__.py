"""The tabs' logic, with no UI library: each Gradio event calls one function here and shows what it returns.

`access` holds the checks for a public server (models, server paths, sizes), `common` the inputs every tab shares
(model, texts, the image from an upload or a link reference, text pools, progress), and one module per tab
(`decomposition`, `heads`, `neurons`, `circuits`, `segmentation`, `adversarial`) returns plain views: Markdown, table rows, PIL images and a link state.
Like `core.cli`, this is a front door: it may import every concept package, and nothing in core imports it.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "access": ["check_model", "check_server_path", "check_bases_source", "check_count"],
    "common": ["load_model", "read_texts", "query_image", "text_pool", "LinkPanel", "link_panel"],
    "decomposition": ["DecompositionView", "decompose", "render_decomposition"],
    "heads": ["HeadTexts", "head_texts", "compute_text_span", "explain_image", "retrieve_similar", "remove_spurious"],
    "neurons": ["NeuronView", "show_neuron", "neuron_on_image", "search_neurons", "discover_concepts",
                "compute_statistics"],
    "segmentation": ["SegmentationView", "segment", "rerender"],
    "adversarial": ["AdversarialView", "generate"],
    "circuits": ["CircuitView", "show_circuit", "measure_ablation", "show_in_edges"],
})
