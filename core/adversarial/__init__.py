"""Semantic adversarial images from neurons' spurious words (paper 2, section 5.1), one function per step.

direction (v = e(c2) - e(c1)) -> top neurons by |<v, r_n>| -> word scores sum_n gamma_j^n <v, r_n> ->
synonym filter -> top-k words -> descriptions -> text to image (`sd` through diffusers, or the offline
`world` stand-in) -> binary CLIP verdict; with the random-neuron and similar-words baselines.
Builds on `core.engine` and `core.neurons`; never imports gradio.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "directions": ["ClassDirection", "class_direction", "check_classes"],
    "neurons": ["NeuronSelection", "layer_bases", "top_neurons", "random_neurons"],
    "words": ["WordScores", "FilteredWords", "TopWords", "score_words", "filter_words", "top_words", "similar_words",
              "plural_forms"],
    "descriptions": ["Descriptions", "template_descriptions", "llm_descriptions", "load_text_generator", "drop_naming"],
    "generators": ["GeneratedImages", "WorldGenerator", "WorldRules", "StableDiffusionGenerator", "load_sd_pipeline",
                   "parse_world_words", "sd_gpu_seconds", "SD_SECONDS_PER_STEP_IMAGE"],
    "verdict": ["BinaryClassifier", "Verdicts", "binary_classifier", "judge"],
    "pipeline": ["AdversarialConfig", "AdversarialReport", "Attempt", "run_adversarial", "make_generator"],
    "results": ["write_results", "check_output_folder", "write_protocol_report"],
    "protocol": ["Protocol", "load_protocol", "run_protocol", "format_report", "resolve_protocol_path"],
    "defaults": ["DEFAULT_SIMILARITY", "DEFAULT_WORDS", "SD_REPO", "SD_REVISION", "SD_STEPS", "DEFAULT_NEURONS",
                 "PAPER_EMBED_DIMS"],
})
