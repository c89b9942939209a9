"""The engine: load a CLIP, trace one forward pass, split its image representation into direct effects.

Nothing here knows about heads' labels, neurons' texts or the generated world; those packages build on this one.
`reference` holds the slow literal implementations of the papers' equations that the tests use as oracles.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "models": ["ClipBundle", "ModelInfo", "load_clip", "parse_spec", "canonical_spec", "default_spec", "describe"],
    "trace": ["VitTrace", "trace_vit", "check_supported", "layer_norm_stats", "attention_forward"],
    "shared_trace": ["shared_trace", "trace_scope", "clear_shared_traces", "TraceCache"],
    "contributions": ["DirectEffects", "FoldedWeights", "direct_effects", "fold_weights", "cls_to_cls",
                      "spatial_value_maps"],
    "decomposition": ["ImageDecomposition", "decompose_image"],
    "ablation": ["Ablation", "ComponentMeans", "ablate", "ablation_accuracies", "component_means",
                 "standard_ablations"],
    "text": ["encode_texts", "read_text_pool", "zero_shot_classifier", "prompt_classifier", "component_scores",
             "cache_dir"],
    "imagesets": ["ImageSet", "ImageShard", "parse_image_set", "register_generator"],
    "images": ["LabelledImages", "load_image", "image_files", "image_folder", "labelled_from_csv",
               "iter_image_batches"],
    "reference": ["literal_direct_effects", "literal_components", "literal_second_order"],
    "viz": ["heat_grid", "overlay", "model_view", "diverging_colours"],
    "labels": ["Component", "component_label", "head_label", "mlp_label", "neuron_label", "parse_label"],
})
