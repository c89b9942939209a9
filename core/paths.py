"""Where the project's own files live (no heavy imports, so the command line starts fast)."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "model_configs"
DATA_DIR = PACKAGE_DIR / "data"
TOY_ARCH = "Toy-ViT-S8-64"
TOY_DIR = DATA_DIR / "toy"
TOY_WEIGHTS = TOY_DIR / "toy_clip.safetensors"
TOY_TEXTS = DATA_DIR / "toy_texts.txt"
TOY_BIASED_SPEC = "toy-biased"
TOY_BIASED_DIR = DATA_DIR / "toy_biased"
TOY_BIASED_WEIGHTS = TOY_BIASED_DIR / "toy_biased_clip.safetensors"
# A second planted-bias model, other shapes and backgrounds (circle:checkered, star:pink), same recipe.
TOY_BIASED_2_SPEC = "toy-biased-2"
TOY_BIASED_2_DIR = DATA_DIR / "toy_biased_2"
TOY_BIASED_2_WEIGHTS = TOY_BIASED_2_DIR / "toy_biased_2_clip.safetensors"
# The project's own models: spec -> weights file (all of the toy architecture, source "toy").
TOY_MODELS = {"toy": TOY_WEIGHTS, TOY_BIASED_SPEC: TOY_BIASED_WEIGHTS, TOY_BIASED_2_SPEC: TOY_BIASED_2_WEIGHTS}
TOY_DISPLAY_NAMES = {
    "toy": "toy: clipscope's small CLIP trained on a generated world of shapes (offline default)",
    TOY_BIASED_SPEC: "toy-biased: clipscope's small CLIP trained on a world with a planted bias "
                     "(triangles on dotted, squares on striped backgrounds)",
    TOY_BIASED_2_SPEC: "toy-biased-2: clipscope's small CLIP trained on a world with a second planted bias "
                       "(circles on checkered, stars on pink backgrounds)",
}
