"""Zero-shot segmentation: heads (paper 1) and neurons (paper 2) against attention baselines, under the
papers' protocol and metrics, on ImageNet-segmentation, image folders and the generated world.

Builds on `core.engine` (and reads neuron bases through `core.neurons`); `reference` holds the literal
transcriptions of the papers' metric code and of the heads map that the tests use as oracles.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "methods": ["METHODS", "MethodOptions", "MethodOutput", "Targets", "Segmenter", "NeuronPool", "neuron_pool",
                "parse_heads"],
    "protocols": ["PROTOCOLS", "Protocol", "method_protocol", "normalise_maps", "binarise", "mask_view"],
    "metrics": ["ImageScores", "SegmentationMetrics", "image_scores"],
    "datasets": ["SegmentationDataset", "SegmentationSample", "WorldSegmentation", "ImageNetSegmentation",
                 "FolderSegmentation", "open_dataset", "first_images", "write_imagenet_segmentation"],
    "evaluate": ["EvaluationReport", "MethodResult", "evaluate", "recompute_from_maps", "oracle_grids"],
    "segment": ["ImageSegmentation", "segment_image", "label_map", "world_truth", "iou"],
    "reference": ["paper_eval_image", "paper_dataset_metrics", "literal_heads_map", "original_spatial_path"],
})
