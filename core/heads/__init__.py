"""Attention heads (paper 1): per-head outputs, TextSpan labels, completeness, retrieval, spurious-cue removal.

Builds on `core.engine`; never imports `core.neurons`.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "outputs": ["Head", "HeadOutputs", "head_name", "parse_heads", "check_heads", "default_heads", "heads_of_layers",
                "head_outputs", "fit_text_span", "image_head_contributions", "head_token_maps", "rank_heads",
                "head_statistics", "StreamedHeadStatistics", "select_heads", "pil_batches", "difference_map",
                "image_head_texts"],
    "textspan": ["TextSpanResult", "text_span", "text_span_reference", "reconstruct", "head_texts", "HeadStatistics",
                 "text_span_from_stats", "DEFAULT_RANK", "CRITERIA", "SPANS"],
    "completeness": ["CompletenessReport", "completeness_on_folder", "completeness_accuracies"],
    "retrieval": ["query_in_gallery", "GalleryIndex", "build_gallery", "load_gallery", "save_gallery", "nearest", "query_contributions",
                  "gallery_cache_path", "METRICS"],
    "spurious": ["remove_spurious_cues", "SpuriousReport", "spurious_report", "grouped_folder", "random_head_sets",
                 "describe_heads", "read_head_set"],
    "bases": ["build_textspan_bases", "finish_textspan_bases", "head_text_rows", "head_texts_from_bases",
              "artifact_result", "table_rows", "fit_in_memory", "TABLE", "MEANS_GROUP", "check_sizes", "group_name",
              "result_tensors", "textspan_build_params", "textspan_metrics"],
})
