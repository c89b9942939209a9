"""The generated world of shapes (exact labels and masks), the toy CLIP trained on it, and the example images."""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "scenes": ["Scene", "ZeroShotTask", "sample_scenes", "heldout_scenes", "render", "render_batch", "shape_mask",
               "caption", "write_scenes", "load_toy_texts"],
    "toy": ["TrainConfig", "train_toy", "evaluate_toy", "build_card", "write_model_card", "check_training_outputs"],
    "examples": ["example_images", "EXAMPLE_SEED"],
    "composites": ["render_composite", "MAX_OBJECTS", "MIN_OBJECTS", "sample_composites"],
    "bias": ["SHIPPED", "PlantedBias", "group_accuracy_table", "write_grouped_scenes", "planted_bias_of", "model_bias"],
    "checkpoints": ["checkpoint_config", "is_toy_weights"],
    "bias_removal": ["DEFAULT_SHARE", "DEFAULT_TOP", "background_heads", "bias_removal_report"],
})
