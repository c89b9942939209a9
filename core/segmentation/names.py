"""The segmentation methods' names, importable without torch (the Segmentation tab lays out its page before any
model is loaded); `core.segmentation.methods` computes them."""

METHODS = ("heads", "neurons", "random-neurons", "raw-attention", "rollout", "gradcam", "chefer")
TEXT_FREE = ("raw-attention", "rollout")  # maps that do not depend on the text
