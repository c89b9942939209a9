"""Step 6: descriptions of images of c1 that use the spurious words (and must not name c2).

Default: templates, no language model. Each description names c1 first, then 1-5 of the top words,
drawn (seeded) with probability proportional to their scores and written in score order, so the
strongest cue comes first. With a text-generation model (transformers' pipeline), the model writes
them from the paper's prompt (paper 2, appendix table 6); its
numbered lines are parsed. Either way, descriptions that name c2 (word boundary, plurals) are dropped.

>>> batch = template_descriptions("square", top.words, top.scores, n=10, seed=0)
>>> kept = drop_naming(batch, "triangle")
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from core.adversarial.words import naming_pattern, names_any
from core.errors import ConfigError, WeightsError

TEMPLATES = (
    "a photo of a {c1}, {words}",
    "a {c1} with {words}",
    "an image of a {c1} and {words}",
    "a picture of a {c1}: {words}",
)
MAX_WORDS_PER_DESCRIPTION = 5  # the paper asks the language model to use as many list words as it can

# The paper's instructions to the language model (B.11), in our words.
LLM_SYSTEM = "You are a capable instruction-following AI agent."
LLM_PROMPT = (
    "Write {n} different one-sentence descriptions of photos that each show a {c1}. Every description must "
    "mention the {c1}. Never mention a {c2}, its synonyms, its plural or anything that looks like a {c2}. Use as "
    "many words as you can from this list, describing places, objects and people visually: {words}. Write one "
    "description per line, numbered 1. to {n}."
)


@dataclass(frozen=True)
class Descriptions:
    texts: list[str]
    how: str
    dropped: list[dict] = field(default_factory=list)  # {"text", "reason"}

    def __len__(self) -> int:
        return len(self.texts)


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def template_descriptions(present: str, words: Sequence[str], scores: Sequence[float], *, n: int = 10,
                          seed: int = 0, per_description: int = MAX_WORDS_PER_DESCRIPTION) -> Descriptions:
    """n descriptions of `present` built from TEMPLATES; words drawn with probability proportional to score."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of descriptions must be a positive integer, got {n!r}")
    if not words or len(words) != len(scores):
        raise ConfigError("descriptions need at least one word, with one score per word")
    weights = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    if not weights.sum() > 0:
        raise ConfigError("descriptions need at least one word with a positive score")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDE5C]))
    texts = []
    for _ in range(n):
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        count = min(int(rng.integers(1, per_description + 1)), int((weights > 0).sum()))
        chosen = sorted(rng.choice(len(words), size=count, replace=False, p=weights / weights.sum()).tolist())
        texts.append(template.format(c1=present, words=_join([words[i] for i in chosen])))
    return Descriptions(texts, f"{len(TEMPLATES)} templates naming {present!r}, 1-{per_description} words each drawn "
                        f"by score (seed {seed})")


def parse_numbered(text: str) -> list[str]:
    """Lines "1. ...", "2) ..." of a language model's answer, numbers stripped (as the paper code keeps them)."""
    lines = []
    for line in text.splitlines():
        found = re.match(r"\s*\d+\s*[.)]\s*(.+)", line)
        if found and found.group(1).strip():
            lines.append(found.group(1).strip().strip('"'))
    return lines


def llm_messages(present: str, target: str, words: Sequence[str], n: int) -> list[dict]:
    """The chat the language model is given: the paper's instructions with the classes and the words."""
    return [{"role": "system", "content": LLM_SYSTEM},
            {"role": "user", "content": LLM_PROMPT.format(n=max(n, 1), c1=present, c2=target, words=", ".join(words))}]


def llm_answer(generator, present: str, target: str, words: Sequence[str], *, n: int = 10, seed: int = 0,
               max_new_tokens: int = 1024, temperature: float = 0.6, top_p: float = 0.9) -> str:
    """The raw answer of a transformers text-generation pipeline to `llm_messages` (sampling seeded)."""
    from transformers import set_seed

    set_seed(int(seed))
    out = generator(llm_messages(present, target, words, n), max_new_tokens=max_new_tokens, do_sample=True,
                    temperature=temperature, top_p=top_p)
    answer = out[0]["generated_text"]
    if isinstance(answer, list):  # chat pipelines return the conversation; the last turn is the answer
        answer = answer[-1]["content"]
    return str(answer)


def llm_descriptions(generator, present: str, target: str, words: Sequence[str], *, n: int = 10, seed: int = 0,
                     **sampling) -> Descriptions:
    """Descriptions written by a transformers text-generation pipeline `generator` from the paper's prompt.

    Sampling as the paper code: temperature 0.6, top-p 0.9, seeded. The first n numbered lines are kept.
    """
    texts = parse_numbered(llm_answer(generator, present, target, words, n=n, seed=seed, **sampling))[:n]
    if not texts:
        raise ConfigError("the language model wrote no numbered descriptions; try another seed or model")
    model = getattr(getattr(generator, "model", None), "name_or_path", "a text-generation model")
    return Descriptions(texts, f"written by {model or 'a text-generation model'} from the paper's prompt (seed {seed})")


def load_text_generator(repo: str, revision: str | None = None, *, device: str = "cpu"):
    """transformers' text-generation pipeline for `repo` at `revision`, failing clearly offline."""
    from transformers import pipeline

    from core import guards

    kind, source = guards.check_model_source(repo, "--llm (text-generation model)")  # --allow-path, public mode
    try:
        if kind == "folder":
            return pipeline("text-generation", model=source, device=device)
        if guards.hub_only():  # by id alone: a local folder of the same name is never read
            from huggingface_hub import snapshot_download

            folder = snapshot_download(source, revision=revision, allow_patterns=LLM_FILES)
            return pipeline("text-generation", model=folder, device=device)
        return pipeline("text-generation", model=source, revision=revision, device=device)
    except (OSError, ValueError, KeyError, TypeError) as err:  # a malformed folder fails in several ways
        raise WeightsError(f"could not load the text-generation model {repo}"
                           f"{'@' + revision if revision else ''}: {str(err).splitlines()[0][:200]}. Download it once "
                           "where there is network (it is then cached under HF_HOME), or leave --llm unset to write "
                           "descriptions from templates.") from err


# What a text-generation model needs from its Hub repo (config, tokenizer, safetensors weights): fetched by id.
LLM_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def drop_naming(descriptions: Descriptions, target: str, *, block: Sequence[str] = (),
                present: str | None = None) -> Descriptions:
    """Keep descriptions that never name the target (word boundary, plurals) or a blocked word, and (if
    `present` is given) that name the present class."""
    target_pattern, block_pattern = naming_pattern([target]), naming_pattern(block)
    present_pattern = naming_pattern([present]) if present else None
    kept, dropped = [], list(descriptions.dropped)
    for text in descriptions.texts:
        if (name := names_any(text, target_pattern)) is not None:
            dropped.append({"text": text, "reason": f"names the target ({name!r})"})
        elif (name := names_any(text, block_pattern)) is not None:
            dropped.append({"text": text, "reason": f"names a blocked word ({name!r})"})
        elif present_pattern is not None and names_any(text, present_pattern) is None:
            dropped.append({"text": text, "reason": f"does not name {present!r}"})
        else:
            kept.append(text)
    return Descriptions(kept, descriptions.how, dropped)
