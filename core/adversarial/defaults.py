"""The generator's defaults, in one light module (the command line reads them without importing torch)."""

DEFAULT_NEURONS = 100  # top neurons by |<v, r_n>| (paper: 100, on ViT-B-32, whose embedding has 512 dimensions)
PAPER_EMBED_DIMS = 512
DEFAULT_LAST_LAYERS = 3  # default layers: the last three the bases cover (paper: 8-10 of ViT-B-32)
DEFAULT_WORDS = 25  # top words (paper: 25)
DEFAULT_SIMILARITY = 0.9  # drop words whose CLIP text cosine to the target is at least this

SD_REPO = "stabilityai/sd-turbo"
SD_REVISION = "b261bac6fd2cf515557d5d0707481eafa0485ec2"  # a pinned commit of SD-Turbo
SD_STEPS = 1  # SD-Turbo draws in 1-4 steps
SD_GUIDANCE = 0.0  # distilled turbo checkpoints draw without classifier-free guidance


def default_neurons(embed_dims: int) -> int:
    """The paper's 100 neurons, scaled down on embeddings narrower than ViT-B-32's 512 dimensions (19 on the toy).

    The words are a <v, r_n>-weighted sum over the chosen neurons' decompositions. With nearly as many
    neurons as embedding dimensions, that sum points at v from any neurons, random ones included, and
    choosing the top ones stops mattering: on the 96-dimensional toy, the cosine of sum_n r_n <v, r_n> with v
    is 0.53 for 19 random neurons against 0.87 for the top 19, and 0.62 against 0.78 at 100 (docs/reproduce.md).
    """
    return max(1, min(DEFAULT_NEURONS, round(DEFAULT_NEURONS * int(embed_dims) / PAPER_EMBED_DIMS)))
