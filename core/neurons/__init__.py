"""MLP neurons (paper 2): second-order effects, their statistics and first PCs, sparse text decompositions (OMP),
concept discovery.

Builds on `core.engine`; never imports `core.heads`.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "second_order": ["SecondOrderBasis", "second_order_basis", "second_order_effects", "check_layer"],
    "stats": ["NeuronStats", "neuron_stats", "neuron_means", "neuron_top_deviations", "first_principal_components"],
    "sparse": ["SparseCode", "omp", "iter_omp", "omp_reference", "prepare_dictionary", "decompose_texts"],
    "texts": ["NeuronTexts", "decompose_neurons", "image_effects", "image_second_order", "activation_map",
              "search_neurons"],
    "concepts": ["Concepts", "discover_concepts", "image_concepts"],
    "bases": ["NeuronBasis", "BuildOptions", "build_neuron_bases", "load_neuron_basis", "find_neuron_bases",
              "neuron_layers", "neuron_terms_from_bases"],
})
