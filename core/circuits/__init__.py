"""Circuits: a neuron's second-order effect split exactly over the later attention heads that carry it.

`paths` (the factorisation: per-path weights u and per-image scalars s), `edges` (weight and data edges, paper 2's
active images, head in-edges, streamed over image sets), `ablation` (mean-ablating paths under frozen LayerNorm
and in the real model, attribution patching), `report` (a neuron's out-edges and a head's in-edges with their
texts, for the command line and the tab), `bases` (weight edges stored in a bases artifact), `validation` (the
experiments that check the lens, with their settings fixed), `reference` (the slow literal oracle).

Builds on `core.engine`, `core.neurons` (second-order effects, statistics) and `core.heads` (TextSpan labels).
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "paths": ["PathWeights", "PathTerms", "path_weights", "path_terms", "path_parts", "path_edges", "own_edges"],
    "edges": ["WeightEdges", "DataEdges", "DataEdgeAccumulator", "ActiveImages", "InEdges", "weight_edges",
              "data_edges", "select_active", "head_in_edges"],
    "ablation": ["PathAblation", "token_means", "lens_path_effects", "real_path_effects", "real_neuron_effect",
                 "attribution_scores", "ablate_paths"],
    "report": ["NeuronCircuit", "HeadCircuit", "neuron_circuit", "head_circuit"],
    "bases": ["write_circuit_group", "load_weight_edges", "circuit_layers"],
    "validation": ["Faithfulness", "faithfulness", "labels_predict_causes"],
    "reference": ["literal_path_parts"],
})
