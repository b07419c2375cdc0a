"""An expert's distinctive words: the words and two-word phrases that its top-routed prompts use far more often than
the other prompts. No language model is involved, so they are cheap, deterministic and exactly reproducible — a
check beside the describer's one line, and a reading of the expert where no describer runs.

The score of an n-gram is its document frequency among the expert's top prompts minus its document frequency among
the rest (a contrast of shares, so a word common everywhere scores about 0). N-grams made only of function words, or
beginning or ending with one, are never candidates; an n-gram must occur in at least `MIN_SHARE` of the top prompts.
"""

import re
from collections import Counter

import torch

from ..metrics import top_percent_count

STOP_WORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off
on once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours yourself yourselves also may might must shall one two get got make made
like please use using give write tell""".split())
WORDS = 5  # distinctive n-grams shown per expert
TOP_PERCENT = 10  # an expert's top prompts: its top 10% of routing weights (at least `min_top`)
MIN_SHARE = 0.1


def prompt_ngrams(text: str) -> set:
    """The distinct unigrams and bigrams of a prompt (lower-cased words), without function-word edges."""
    words = re.findall(r"[a-z][a-z'-]*[a-z]|[a-z]", text.lower())
    grams = {word for word in words if word not in STOP_WORDS and len(word) > 1}
    grams.update(f"{first} {second}" for first, second in zip(words, words[1:])
                 if first not in STOP_WORDS and second not in STOP_WORDS and len(first) > 1 and len(second) > 1)
    return grams


def distinctive_words(texts: list, routing: torch.Tensor, count: int = WORDS, min_top: int = 20) -> list:
    """Per expert (a column of `routing` (M, K) over the distinct `texts`): its `count` most distinctive n-grams,
    best first (ties alphabetically), none sharing a word with a better one; fewer when few n-grams occur in enough
    of its top prompts."""
    grams = [prompt_ngrams(text) for text in texts]
    everywhere = Counter(gram for prompt in grams for gram in prompt)
    num_top = min(len(texts), max(min_top, top_percent_count(len(texts), TOP_PERCENT)))
    found = []
    for k in range(routing.shape[1]):
        top = torch.sort(routing[:, k], descending=True, stable=True).indices[:num_top].tolist()
        in_top = Counter(gram for row in top for gram in grams[row])
        rest = max(len(texts) - num_top, 1)
        scores = {gram: hits / num_top - (everywhere[gram] - hits) / rest for gram, hits in in_top.items()
                  if hits >= max(2, MIN_SHARE * num_top)}
        ranked = sorted((gram for gram, score in scores.items() if score > 0), key=lambda gram: (-scores[gram], gram))
        found.append(without_overlaps(ranked, count))
    return found


def without_overlaps(ranked: list, count: int) -> list:
    """The first `count` n-grams of `ranked` that share no word with a better one ("academic style" after
    "academic" adds nothing)."""
    chosen, used = [], set()
    for gram in ranked:
        words = set(gram.split())
        if not words & used:
            chosen.append(gram)
            used |= words
        if len(chosen) == count:
            break
    return chosen
