"""Zero-shot segmentation: heads (paper 1) and neurons (paper 2) against attention baselines, under the
papers' protocol and metrics, on ImageNet-segmentation, image folders and the generated world.

Builds on `core.engine` (and reads neuron bases through `core.neurons`); `reference` holds the literal
transcriptions of the papers' metric code and of the heads map that the tests use as oracles.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "methods": ["METHODS", "MethodOptions", "MethodOutput", "Targets", "Segmenter", "NeuronPool", "neuron_pool",
                "parse_heads", "check_method"],
    "protocols": ["PROTOCOLS", "Protocol", "method_protocol", "normalise_maps", "binarise", "mask_view",
                  "parse_threshold", "geometry_steps"],
    "metrics": ["ImageScores", "SegmentationMetrics", "image_scores"],
    "datasets": ["SegmentationDataset", "SegmentationSample", "WorldSegmentation", "ImageNetSegmentation",
                 "FolderSegmentation", "open_dataset", "first_images", "write_imagenet_segmentation",
                 "read_classnames", "check_same_size", "binary_mask"],
    "evaluate": ["EvaluationReport", "MethodResult", "evaluate", "recompute_from_maps", "oracle_grids",
                 "MAX_RANDOM_DRAWS", "ORACLE"],
    "segment": ["ImageSegmentation", "segment_image", "label_map", "world_truth", "iou", "check_texts"],
    "reference": ["paper_eval_image", "paper_dataset_metrics", "literal_heads_map", "original_spatial_path"],
    "pictures": ["heat_picture", "label_picture", "mask_picture", "side_by_side", "stacked"],
    "benchmarks": ["BENCHMARKS", "run_benchmarks", "targets_met"],
    "names": ["TEXT_FREE"],
    "files": ["segmentation_outputs", "output_names", "slug"],
})
