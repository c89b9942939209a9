"""The files of one image's segmentation, as `python -m core segment` writes them and the Segmentation tab's
download holds them (in memory: the caller writes them, through core.writes or into an archive).

    NN_<text>_map.npy      float32 [H, W] in [0, 1] over the model's view
    NN_<text>_map.png      heat map with its colour scale
    NN_<text>_mask.png     0/255
    NN_<text>_overlay.png  the mask over the image
    labels.npy / .png      (several texts) the argmax view, int16, -1 = background
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def slug(text: str, limit: int = 40) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    while "__" in cleaned:
        cleaned = cleaned.replace("__", "_")
    return cleaned[:limit] or "text"


def output_names(texts: list[str], several: bool) -> list[str]:
    """The files of one segmentation (besides segment.json), in writing order."""
    files = [f"{index:02d}_{slug(text)}_{kind}" for index, text in enumerate(texts)
             for kind in ("map.npy", "map.png", "mask.png", "overlay.png")]
    return files + (["labels.npy", "labels.png"] if several else [])


def segmentation_outputs(result, *, background: int | None = None, threshold=None) -> tuple[dict, list[str]]:
    """({name: numpy array or PIL image}, names in order) of an ImageSegmentation; `threshold` None: the
    method's own rule (as the result was computed)."""
    from core.segmentation.pictures import heat_picture, label_picture, mask_picture

    method = result.method
    masks = result.masks(threshold)
    outputs: dict[str, object] = {}
    for index, text in enumerate(result.texts):
        stem = f"{index:02d}_{slug(text)}"
        outputs[f"{stem}_map.npy"] = np.asarray(result.maps[index], dtype=np.float32)
        outputs[f"{stem}_map.png"] = heat_picture(result.view, result.maps[index], title=f"{method}: {text}")
        outputs[f"{stem}_mask.png"] = Image.fromarray(masks[index].astype(np.uint8) * 255)
        outputs[f"{stem}_overlay.png"] = mask_picture(result.view, masks[index], title=f"{text}")
    if len(result.texts) > 1:
        labels = result.labels(threshold, background)
        outputs["labels.npy"] = labels.astype(np.int16)
        outputs["labels.png"] = label_picture(result.view, labels, result.texts, title=f"{method}: argmax")
    names = output_names(result.texts, len(result.texts) > 1)
    assert list(outputs) == names
    return outputs, names
