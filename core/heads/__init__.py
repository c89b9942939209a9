"""Attention heads (paper 1): per-head outputs, TextSpan labels, completeness, retrieval, spurious-cue removal.

Builds on `core.engine`; never imports `core.neurons`.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "outputs": ["Head", "HeadOutputs", "head_name", "parse_heads", "check_heads", "default_heads", "heads_of_layers",
                "head_outputs", "fit_text_span", "image_head_contributions", "head_token_maps", "rank_heads",
                "head_statistics", "StreamedHeadStatistics"],
    "textspan": ["TextSpanResult", "text_span", "text_span_reference", "reconstruct", "head_texts",
                 "HeadStatistics", "text_span_from_stats"],
    "completeness": ["CompletenessReport", "completeness_on_folder", "completeness_accuracies"],
    "retrieval": ["GalleryIndex", "build_gallery", "load_gallery", "save_gallery", "nearest", "query_contributions"],
    "spurious": ["SpuriousReport", "spurious_report", "grouped_folder", "random_head_sets", "describe_heads"],
    "bases": ["build_textspan_bases", "finish_textspan_bases", "head_text_rows", "head_texts_from_bases",
              "artifact_result"],
})
