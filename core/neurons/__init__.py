"""MLP neurons (paper 2): second-order effects, their statistics and first PCs, sparse text decompositions (OMP),
concept discovery.

Builds on `core.engine`; never imports `core.heads`.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "second_order": ["SecondOrderBasis", "second_order_basis", "second_order_effects", "check_layer", "COEFFICIENT",
                     "MODES", "BiasPaths", "bias_paths", "mlp_output_weights", "path_shared_terms", "path_values",
                     "second_order_scalars", "value_weights"],
    "stats": ["NeuronStats", "neuron_stats", "neuron_means", "neuron_top_deviations", "first_principal_components",
              "pca_bytes_per_neuron", "pca_chunk", "DEFAULT_K", "check_k", "TopDeviations", "rank_order"],
    "sparse": ["SparseCode", "omp", "iter_omp", "omp_reference", "prepare_dictionary", "decompose_texts"],
    "texts": ["NeuronTexts", "decompose_neurons", "image_effects", "image_second_order", "activation_map",
              "search_neurons", "neuron_ablation_accuracies", "default_terms"],
    "concepts": ["Concepts", "discover_concepts", "image_concepts", "effect_sizes"],
    "bases": ["NeuronBasis", "BuildOptions", "build_neuron_bases", "load_neuron_basis", "find_neuron_bases",
              "neuron_layers", "neuron_terms_from_bases", "BUILD_COMMAND", "Evaluation", "read_ablation_table",
              "STORED_FLOAT", "neuron_build_params", "write_neuron_layer", "write_neuron_tables"],
    "indirect": ["ablated_embeddings", "activation_means", "indirect_stats"],
})
