"""Steps 3-5: word scores from the chosen neurons' sparse text decompositions, the synonym filter, top-k.

Word scores (paper 2, eq. 6): w_j = sum over chosen neurons n of gamma_j^n <v, r_n>, where gamma^n is
neuron n's sparse decomposition of r_n over the text pool. The official code instead ranked single
(neuron, word) pairs gamma_j^n <v, r_n> without summing; `per_pair=True` reproduces that (a word
then scores its best pair).

The filter drops words that name the target class c2 or a synonym: a word-boundary match of the
class name or its plural ("cat" never matches "education"), a CLIP text-similarity threshold to c2
(the model's own text tower; the paper used a sentence-transformer), and a configurable block list.

>>> scored = score_words(selection, bases)
>>> kept = filter_words(bundle, scored, "triangle", threshold=0.9, block=["pyramid"])
>>> top_words(kept, k=25)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

from core.adversarial.defaults import DEFAULT_SIMILARITY, DEFAULT_WORDS
from core.adversarial.neurons import NeuronSelection, quantise
from core.engine.models import ClipBundle
from core.engine.text import encode_texts
from core.errors import ConfigError
from core.neurons.bases import NeuronBasis



@dataclass(frozen=True)
class WordScores:
    """A score per text of the pool; `texts` is the pool the decompositions index."""

    texts: list[str]
    scores: torch.Tensor  # [text] float64
    how: str  # "sum over neurons (paper eq. 6)" | "best (neuron, word) pair (official code)" | ...

    def order_key(self):
        """Sort key for pool indices: score descending (to 1e-6 of the largest, so float noise ties), then index."""
        rounded = quantise(self.scores)
        return lambda j: (-float(rounded[j]), j)

    def ranked(self, indices: Sequence[int] | None = None) -> list[tuple[str, float]]:
        """(text, score) by score descending, ties by pool order; only `indices` if given."""
        pool = range(len(self.texts)) if indices is None else indices
        return [(self.texts[j], float(self.scores[j])) for j in sorted(pool, key=self.order_key())]


def score_words(selection: NeuronSelection, bases: dict[int, NeuronBasis], *, per_pair: bool = False) -> WordScores:
    """w_j = sum_n gamma_j^n <v, r_n> over the selected neurons (per_pair: max_n of the pair scores instead)."""
    texts = next(iter(bases.values())).texts
    scores = torch.zeros(len(texts), dtype=torch.float64)
    if per_pair:
        scores.fill_(-torch.inf)
    touched = torch.zeros(len(texts), dtype=torch.bool)
    for layer in sorted(set(selection.layers.tolist())):
        if layer not in bases:
            raise ConfigError(f"neuron layer {layer} is not among the loaded bases' layers {sorted(bases)}")
        mine = selection.layers == layer
        words = bases[layer].words
        indices = words.indices[selection.neurons[mine]]  # [chosen, term]
        weights = words.coefficients[selection.neurons[mine]].double() * selection.projections[mine, None].double()
        valid = indices >= 0
        if per_pair:
            scores.scatter_reduce_(0, indices[valid], weights[valid], reduce="amax")
        else:
            scores.index_add_(0, indices[valid], weights[valid])
        touched[indices[valid]] = True
    scores = torch.where(touched, scores, torch.zeros_like(scores))
    how = "best (neuron, word) pair, gamma_j^n <v, r_n> (official code)" if per_pair else \
        "sum over neurons of gamma_j^n <v, r_n> (paper eq. 6)"
    return WordScores(list(texts), scores, how)


# ---------------------------------------------------------------- synonym filter

def plural_forms(name: str) -> list[str]:
    """The class name and its regular plural (or singular): "cross" -> crosses, "butterfly" -> butterflies."""
    name = name.strip().lower()
    head, _, last = name.rpartition(" ")
    forms = {last}
    if len(last) > 3 and last.endswith("s") and not last.endswith("ss"):  # given as a plural: add the singular
        if last.endswith("ies"):
            forms.add(last[:-3] + "y")
        elif re.search(r"(s|x|z|ch|sh)es$", last):
            forms.add(last[:-2])
        else:
            forms.add(last[:-1])
    elif re.search(r"(s|x|z|ch|sh)$", last):
        forms.add(last + "es")
    elif re.search(r"[^aeiou]y$", last):
        forms.add(last[:-1] + "ies")
    else:
        forms.add(last + "s")
    return sorted((f"{head} {f}" if head else f) for f in forms)


def naming_pattern(names: Sequence[str]) -> re.Pattern | None:
    """A case-insensitive word-boundary regex for the names and their plurals (None for no names)."""
    forms = sorted({form for name in names if name.strip() for form in plural_forms(name)}, key=lambda f: (-len(f), f))
    if not forms:
        return None
    alternatives = "|".join(r"\s+".join(map(re.escape, form.split())) for form in forms)
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)


def names_any(text: str, pattern: re.Pattern | None) -> str | None:
    """The first name `pattern` finds in text as a whole word, or None."""
    if pattern is None:
        return None
    found = pattern.search(text)
    return found.group(0) if found else None


@dataclass(frozen=True)
class FilteredWords:
    """Words that survived the filter (pool indices, by score) and why the others were dropped."""

    scores: WordScores
    kept: list[int]
    removed: list[dict] = field(default_factory=list)  # {"text", "score", "reason"}
    target: str = ""
    threshold: float = DEFAULT_SIMILARITY
    block: tuple[str, ...] = ()
    judge: str = ""  # the model whose text tower measured the similarity

    def describe(self) -> str:
        return (f"dropped {len(self.removed)} of {len(self.kept) + len(self.removed)} scored words naming "
                f"{self.target!r} or a synonym (word boundary and plural, text cosine >= {self.threshold:g} in "
                f"{self.judge or 'the model'}'s text tower" + (f", block list {', '.join(self.block)}" if self.block
                                                                else "") + ")")


def filter_words(bundle: ClipBundle, scores: WordScores, target: str, *, threshold: float = DEFAULT_SIMILARITY,
                 block: Sequence[str] = (), candidates: Sequence[int] | None = None) -> FilteredWords:
    """Drop words naming `target` (word boundary, plurals), blocked words, and words whose text embedding
    in `bundle` (the synonym judge) has cosine >= threshold with the target's. candidates: pool indices
    to consider (default: every word with a non-zero score).

    The judge is the model under study by default. A model with a spurious cue has learned to embed the
    cue's words near the class (the bias lives in its text tower too), so its own similarity removes the
    very words the method looks for; an independent text model avoids that, as the paper's
    sentence-transformer did (for toy-biased: the unbiased toy)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"the similarity threshold must be a number in [-1, 1], got {threshold!r}")
    block = tuple(b.strip() for b in block if b and b.strip())
    if candidates is None:
        candidates = [j for j in range(len(scores.texts)) if float(scores.scores[j]) != 0.0]
    candidates = list(candidates)
    target_pattern, block_pattern = naming_pattern([target]), naming_pattern(block)
    similarity = torch.zeros(len(scores.texts))
    if candidates:
        embeddings = encode_texts(bundle, [scores.texts[j] for j in candidates] + [target]).float().cpu()
        similarity[candidates] = embeddings[:-1] @ embeddings[-1]
    kept, removed = [], []
    for j in candidates:
        text = scores.texts[j]
        reason = None
        if (name := names_any(text, target_pattern)) is not None:
            reason = f"names {name!r}"
        elif (name := names_any(text, block_pattern)) is not None:
            reason = f"blocked ({name!r})"
        elif float(similarity[j]) >= threshold:
            reason = f"similar to {target!r} (cos {float(similarity[j]):.3f})"
        if reason:
            removed.append({"text": text, "score": float(scores.scores[j]), "reason": reason})
        else:
            kept.append(j)
    kept.sort(key=scores.order_key())
    return FilteredWords(scores, kept, removed, target, float(threshold), block, bundle.info.spec)


@dataclass(frozen=True)
class TopWords:
    words: list[str]
    scores: list[float]
    how: str

    def rows(self) -> list[dict]:
        return [{"rank": i + 1, "word": w, "score": s} for i, (w, s) in enumerate(zip(self.words, self.scores))]


def top_words(filtered: FilteredWords, k: int = DEFAULT_WORDS) -> TopWords:
    """The k best-scoring kept words with a positive score (pushing towards the target)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"the number of words must be a positive integer, got {k!r}")
    positive = [j for j in filtered.kept if float(filtered.scores.scores[j]) > 0][:k]
    if not positive:
        raise ConfigError(f"no words left after filtering: none of the {len(filtered.kept) + len(filtered.removed)} "
                          f"scored words both avoids {filtered.target!r} and its synonyms and pushes towards it. "
                          "Lower the similarity threshold, shorten the block list, use more neurons or a larger text pool.")
    return TopWords([filtered.scores.texts[j] for j in positive], [float(filtered.scores.scores[j]) for j in positive],
                    filtered.scores.how)


def similar_words(bundle: ClipBundle, texts: Sequence[str], target: str, *, k: int = DEFAULT_WORDS,
                  threshold: float = DEFAULT_SIMILARITY, block: Sequence[str] = (),
                  judge: ClipBundle | None = None) -> TopWords:
    """Baseline: the k pool words most similar to the target in the model's text space, after the same
    filter (synonyms judged by `judge`, default the model itself)."""
    embeddings = encode_texts(bundle, list(texts) + [target]).float().cpu()
    cosine = (embeddings[:-1] @ embeddings[-1]).double()
    scores = WordScores(list(texts), cosine, "CLIP text cosine to the target (similar-words baseline)")
    # Every word is a candidate; the score is the similarity, so the filter's threshold caps it.
    filtered = filter_words(judge or bundle, scores, target, threshold=threshold, block=block,
                            candidates=range(len(texts)))
    kept = filtered.kept[:k]
    if not kept:
        raise ConfigError(f"no words left after filtering for the similar-words baseline of {target!r}")
    return TopWords([texts[j] for j in kept], [float(cosine[j]) for j in kept], scores.how)
