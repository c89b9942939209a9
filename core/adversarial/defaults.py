"""The generator's defaults, in one light module (the command line reads them without importing torch)."""

DEFAULT_NEURONS = 100  # top neurons by |<v, r_n>| (paper: 100)
DEFAULT_LAST_LAYERS = 3  # default layers: the last three the bases cover (paper: 8-10 of ViT-B-32)
DEFAULT_WORDS = 25  # top words (paper: 25)
DEFAULT_SIMILARITY = 0.9  # drop words whose CLIP text cosine to the target is at least this

SD_REPO = "stabilityai/sd-turbo"
SD_REVISION = "b261bac6fd2cf515557d5d0707481eafa0485ec2"  # a pinned commit of SD-Turbo
SD_STEPS = 1  # SD-Turbo draws in 1-4 steps
SD_GUIDANCE = 0.0  # distilled turbo checkpoints draw without classifier-free guidance
