"""Stanford SHP (paper App. A, Table 7): Reddit answers compared by their upvotes."""

import random
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator

from datasets import Dataset

from ...errors import InputError
from ..schema import Skip, make_pair, parse_transcript, read_score, read_text, user_turn

COLUMNS = ("history", "human_ref_A", "human_ref_B", "labels", "domain")
# The 16 subreddits used, grouped into 4 categories; two subsets are excluded because their posts carry prefixes
# that leak the domain; only pairs whose responses both have more than 3 likes are kept.
SHP_CATEGORIES = {
    **dict.fromkeys(("askphysics", "askscience", "askengineers", "askhistorians", "askphilosophy",
                     "asksocialscience", "askanthropology"), "academic"),
    **dict.fromkeys(("askdocs", "askvet", "askhr", "legaladvice", "askacademia", "askcarguys"), "professional"),
    **dict.fromkeys(("askbaking", "askculinary"), "cooking"),
    "asksciencefiction": "fiction",
}
SHP_EXCLUDED_DOMAINS = ("explainlikeimfive", "changemyview")
SHP_MIN_LIKES = 3
SHP_SPLITS = ("train", "validation", "test")
STEAMSHP_TURN = re.compile(r"(?:^|\n\n)(HUMAN|ASSISTANT): ")  # SHP's encoding of dialogue histories (SteamSHP)


def pairs(dataset: Dataset, *, seed: int, one_pair_per_post: bool = False) -> Iterator[dict | Skip]:
    """`human_ref_A`/`human_ref_B` answer `history`; `labels == 1` means A is preferred.

    Follows the paper: drops the `explainlikeimfive` and `changemyview` domains, keeps pairs whose responses both
    have more than 3 likes, and with `one_pair_per_post=True` (the paper's evaluation sets) keeps one seeded random
    pair per `post_id` among those left. `category` is the domain's Table 7 group (academic, professional, cooking,
    fiction), or the domain itself outside Table 7. The domain is `domain` without SHP's `_<split>` suffix.

    Files in SHP's schema without `score_A`/`score_B` (the HH helpful file in `shared/data`) cannot be filtered on
    likes: the filter is skipped with a warning. A history written as a dialogue (`HUMAN: ...\\n\\nASSISTANT: ...`,
    SteamSHP's encoding of HH) is split into turns; any other history is one user message.
    """
    columns = set(dataset.column_names)
    has_likes = {"score_A", "score_B"} <= columns
    if not has_likes:
        warnings.warn("shp: no score_A/score_B columns, so the paper's 'both responses have more than "
                      f"{SHP_MIN_LIKES} likes' filter is not applied.", stacklevel=4)
    if one_pair_per_post and "post_id" not in columns:
        raise InputError("one_pair_per_post=True needs a 'post_id' column.")
    outcomes = [_pair(record, index, has_likes) for index, record in enumerate(dataset)]
    if one_pair_per_post:
        outcomes = _one_pair_per_post(outcomes, list(dataset["post_id"]), seed)
    yield from outcomes


def _pair(record: dict, index: int, has_likes: bool) -> dict | Skip:
    domain = read_text(record["domain"], index, "domain")
    subset, _, split = domain.rpartition("_")
    domain = subset if split in SHP_SPLITS else domain
    if domain in SHP_EXCLUDED_DOMAINS:
        return Skip(f"pairs from the excluded domains {', '.join(SHP_EXCLUDED_DOMAINS)}")
    likes = [read_score(record[f"score_{side}"], index, f"score_{side}") for side in "AB"] if has_likes else []
    if None in likes:
        return Skip("pairs with a missing (null or NaN) score_A or score_B")
    if likes and min(likes) <= SHP_MIN_LIKES:
        return Skip(f"pairs with a response of {SHP_MIN_LIKES} likes or fewer")
    label = read_score(record["labels"], index, "labels")
    if label is None:
        return Skip("pairs with a missing (null or NaN) label")
    if label not in (0, 1):
        raise InputError(f"record {index}: field 'labels' must be 0 or 1, got {record['labels']!r}.")
    a = read_text(record["human_ref_A"], index, "human_ref_A")
    b = read_text(record["human_ref_B"], index, "human_ref_B")
    chosen, rejected = (a, b) if label == 1 else (b, a)
    history = read_text(record["history"], index, "history")
    prompt = (parse_transcript(history, STEAMSHP_TURN, index, "history") if STEAMSHP_TURN.match(history)
              else user_turn(history))
    if prompt[-1]["role"] != "user":
        return Skip("pairs whose dialogue history does not end with a user turn")
    return make_pair(prompt, chosen, rejected, category=SHP_CATEGORIES.get(domain, domain))


def _one_pair_per_post(outcomes: list, posts: list, seed: int) -> list:
    """The outcomes with all pairs but one seeded random pick per post turned into skips."""
    pairs_of_post = defaultdict(list)
    for index, outcome in enumerate(outcomes):
        if not isinstance(outcome, Skip):
            pairs_of_post[posts[index]].append(index)
    rng = random.Random(seed)
    kept = {rng.choice(indices) for indices in pairs_of_post.values()}
    return [outcome if isinstance(outcome, Skip) or index in kept else Skip("pairs beyond the one kept per post")
            for index, outcome in enumerate(outcomes)]
