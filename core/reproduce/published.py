"""The papers' published numbers, transcribed from the papers (each entry names its table or section).

Tags: P = the paper's text; PP = the authors' project-page table images; S = secondary sources only
(unverified); NF = searched for and not found (left None: never invented). Percent throughout.
"""

from __future__ import annotations

P1 = "Gandelsman, Efros, Steinhardt. Interpreting CLIP's Image Representation via Text-Based Decomposition. ICLR 2024"
P2 = "Gandelsman, Efros, Steinhardt. Interpreting the Second-Order Effects of Neurons in CLIP. ICLR 2025"

# Paper 1, models (paper 1, section 3): name -> open_clip spec.
P1_MODELS = {"ViT-B-16": "ViT-B-16/laion2b_s34b_b88k", "ViT-L-14": "ViT-L-14/laion2b_s32b_b82k",
             "ViT-H-14": "ViT-H-14/laion2b_s32b_b79k"}
P2_MODEL = "ViT-B-32/openai"  # with QuickGELU (open_clip's ViT-B-32 + openai loads it)

# A.1.1 mean-ablation of direct effects, ImageNet val zero-shot. Only these were found.
P1_ABLATIONS = {
    "ViT-L-14": {"baseline": (75.25, "S"), "all MLPs drop (points)": ((1.0, 3.0), "S")},
    "ViT-B-16": {"all MLPs drop (points)": ((1.0, 3.0), "S")},
    "ViT-H-14": {"all MLPs drop (points)": ((1.0, 3.0), "S")},
    "_note": "exact per-model table: NF (regenerate); direct effect concentrated in the last 4 MSA layers (S)",
}

# A.1.2 TextSpan: ViT-L-14, general descriptions, 60 texts per head, last 4 layers replaced: 72.77 (S).
P1_TEXTSPAN_ACCURACY = {"ViT-L-14": {"texts_per_head": 60, "accuracy": 72.77, "unablated": 75.25, "tag": "S"}}
# Head roles the project page shows for ViT-L-14 (PP heads.png): (layer, head) -> role.
P1_HEAD_ROLES = {(21, 11): "geo-locations", (23, 10): "counting/numbers", (22, 8): "letters",
                 (22, 11): "colours/tones", (22, 6): "animals", (22, 3): "objects/clothing",
                 (23, 12): "textures/patterns", (22, 1): "shapes", (22, 2): "scene locations"}

# A.1.3 Waterbirds worst-group accuracy, test split (PP): base, "top random" (best of a few random sets), ours.
P1_WATERBIRDS = {"ViT-B-16": (45.6, 52.3, 57.5), "ViT-L-14": (47.7, 57.7, 72.9), "ViT-H-14": (37.2, 37.0, 43.3)}
# The heads the paper code ablates (paper 1, section 4.3 (its project page's table and code), 0-indexed (layer, head)); L-14's (22, 12) listed twice.
P1_WATERBIRDS_HEADS = {
    "ViT-B-16": ((11, 3), (10, 11), (10, 10), (9, 8), (9, 6), (11, 6), (11, 0)),
    "ViT-L-14": ((21, 1), (22, 12), (22, 13), (21, 11), (21, 14), (23, 6), (21, 3), (21, 6), (21, 8), (21, 13),
                 (22, 2), (22, 15), (23, 1), (23, 3), (23, 5)),
    "ViT-H-14": ((31, 12), (30, 11), (29, 4), (31, 8), (30, 15), (30, 12), (30, 6), (29, 14), (29, 8)),
}

# A.1.4 and A.2.4 ImageNet-segmentation (pixel accuracy, mIoU, mAP).
P1_SEGMENTATION = {"rollout": (60.63, 40.64, 74.47), "raw-attention": (65.67, 43.83, 76.05),
                   "gradcam": (70.27, 44.50, 70.30), "chefer": (69.21, 47.47, 78.29), "heads": (75.21, 54.50, 81.61)}
P2_SEGMENTATION = {"rollout": (61.8, 42.6, 74.0), "gradcam": (67.3, 39.3, 61.9), "chefer": (68.9, 49.1, 79.7),
                   "raw-attention": (69.6, 49.8, 80.0), "heads": (76.5, 58.1, 84.1), "neurons": (78.1, 59.0, 84.9)}

# A.2.1 Table 1 (ViT-B-32, layer 9, full ImageNet val): accuracy after mean-ablating all neurons' effects,
# and the variance explained by the first PC.
P2_ABLATIONS = {"layer": 9, "indirect accuracy": 52.3, "second-order accuracy": 29.6,
                "indirect PC-1 variance": 11.0, "second-order PC-1 variance": 48.2, "tag": "P"}

# A.2.3 Table 3: images out of 100 that fool the binary classifier, mean (std) over 3 repeats.
P2_ADVERSARIAL = {
    ("horse", "automobile"): {"random neurons": (1.0, 1.4), "indirect": (2.8, 3.7), "similar words": (1.0, 1.4),
                              "second-order": (5.3, 1.9)},
    ("dog", "deer"): {"random neurons": (0.3, 0.5), "indirect": (6.3, 4.8), "similar words": (3.3, 0.9),
                      "second-order": (22.7, 0.5)},
    ("bird", "frog"): {"random neurons": (0.3, 0.5), "indirect": (1.0, 1.4), "similar words": (5.0, 2.9),
                       "second-order": (8.0, 4.5)},
    ("ship", "truck"): {"random neurons": (0.0, 0.0), "indirect": (0.0, 0.0), "similar words": (0.0, 0.0),
                        "second-order": (5.7, 0.9)},
    ("ship", "automobile"): {"random neurons": (1.3, 1.9), "indirect": (0.0, 0.0), "similar words": (1.3, 0.9),
                             "second-order": (7.0, 4.5)},
}
