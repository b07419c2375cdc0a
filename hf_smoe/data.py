"""Preference data: one adapter per dataset format, one pair schema out.

Every adapter turns the records of one public format into pairs with the seven columns of `PAIR_FEATURES`:

- `prompt`: the conversation before the compared assistant turn, as chat messages `{"role", "content"}`;
- `chosen`, `rejected`: the preferred and the dispreferred assistant turn;
- `category`: the latent domain of the pair (read by the metrics, never a training input);
- `attribute`, `criterion`: the wanted attribute and a sentence stating it, for attribute-conditioned data;
- `user`: the simulated user whose preference labels the pair.

Columns a format has no value for hold None, so pairs from different formats concatenate. `load_pairs` reads a Hub
dataset or a local file through `datasets` and runs the adapter; `split_pairs` makes the seeded, stratified
train/validation/test split the shared test files need.

Bad input is never passed over silently. A record that does not fit its format's schema (a missing column, a field
of the wrong type, a chat role other than system/user/assistant) raises an `InputError` (a `ValueError`) naming the
source, the record index and the field; a file that cannot be read (corrupt JSON, a truncated .gz, a file that is not
parquet, a folder of files with different columns) raises one naming the file and, for JSON lines, the first bad line.
Pairs a format's recipe excludes, or that carry no preference signal (ties, a missing (null or NaN) score, label or
rating, transcripts whose prompts differ, an empty prompt or response, responses identical up to surrounding
whitespace), are dropped and counted: one warning per reason, with its count. A number is never compared when it is
missing. A source that leaves no pair at all raises an error saying what was dropped.

Where the papers are silent, the choice made is written in the adapter's docstring.
"""

import gzip
import inspect
import itertools
import json
import math
import os
import random
import re
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import datasets
import pyarrow
import pyarrow.parquet
from datasets import Dataset, DatasetDict, Features, List, Value, load_dataset
from datasets.exceptions import DatasetsError

from .modeling.configuration_smoe import InputError

__all__ = [
    "DSP_CRITERIA", "FORMATS", "HELPSTEER2_CRITERIA", "PAIR_COLUMNS", "PAIR_FEATURES", "PERSONAL_LLM_REWARD_MODELS",
    "RPR_EVALUATION_ATTRIBUTES", "SHP_CATEGORIES", "load_pairs", "personal_llm_users", "split_pairs",
]

PAIR_FEATURES = Features({
    "prompt": List({"role": Value("string"), "content": Value("string")}),
    "chosen": Value("string"),
    "rejected": Value("string"),
    "category": Value("string"),
    "attribute": Value("string"),
    "criterion": Value("string"),
    "user": Value("string"),
})
PAIR_COLUMNS = tuple(PAIR_FEATURES)
PAIR_METADATA = PAIR_COLUMNS[3:]  # category, attribute, criterion, user: never training inputs

# How an attribute-conditioned pair shows its criterion to the model (MiCRo and the paper append it to the input).
CRITERION_TEMPLATE = "{prompt}\n\nCriterion: {criterion}"

# SHP (paper App. A, Table 7): the 16 subreddits used, grouped into 4 categories; two subsets are excluded because
# their posts carry prefixes that leak the domain; only pairs whose responses both have more than 3 likes are kept.
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

# RPR (paper App. A): the 17 attributes with more than 50 test examples, on which steering and personalization are
# evaluated. Select them with `pairs.filter(lambda a: a in RPR_EVALUATION_ATTRIBUTES, input_columns="attribute")`.
RPR_EVALUATION_ATTRIBUTES = (
    "Linguistic Creativity", "User Friendliness", "Humor and Entertainment Value", "Scientific Rigor",
    "Narrative and Storytelling Quality", "Creativity and Originality", "Factual Accuracy", "Innovativeness",
    "Pedagogical Effectiveness", "Economic Feasibility", "Technical Complexity", "Interdisciplinary Approach",
    "Empathy and Emotional Intelligence", "Contextual Relevance", "Clarity and Conciseness", "User Experience",
    "Practical Application",
)

# HelpSteer2 (MiCRo App. B.2, Table 6): the five rated attributes and the context sentence MiCRo gives each.
HELPSTEER2_CRITERIA = {
    "helpfulness": "The assistant should provide users with accurate, relevant, and up-to-date information, ensuring "
                   "that the content is positive, engaging, educational, and truly helpful.",
    "correctness": "The assistant must base responses on verified facts and cover all aspects of the prompt "
                   "fully\u2014avoiding errors, omissions, hallucinations, or irrelevant details.",
    "coherence": "The assistant's responses should be logically structured, easy to follow, and free of "
                 "contradictions, redundancies, or abrupt style shifts.",
    "complexity": "The assistant should employ sophisticated language with elevated vocabulary, appropriate for "
                  "adults with advanced education or subject matter experts.",
    "verbosity": "The assistant should provide an expansive, detailed response that thoroughly elaborates on the "
                 "topic, including additional context and examples beyond the basic answer.",
}

# PersonalLLM (paper App. H): the ten reward models whose scores a simulated user weights, in the order PersonalLLM's
# evaluation code uses (sorted by name). Reward columns are named `response_<k>_<model>`.
PERSONAL_LLM_REWARD_MODELS = (
    "beaver_7b", "gemma_2b", "gemma_7b", "llama3_sfairx", "mistral_raft", "mistral_ray", "mistral_weqweasdas",
    "oasst_deberta_v3", "oasst_pythia_1b", "oasst_pythia_7b",
)

# DSP: under domain d the response written for d is preferred over the other four (the `normal` response included).
# The papers give no criterion sentences for DSP; these state each domain's style in the manner of MiCRo's contexts.
DSP_CRITERIA = {
    "academy": "The response should be written in an academic style: rigorous, precise and well-structured, as in "
               "a scholarly text.",
    "business": "The response should be written in a business style: professional, practical and focused on "
                "commercial value.",
    "entertainment": "The response should be written in an entertaining style: lively, humorous and engaging.",
    "literature": "The response should be written in a literary and artistic style: expressive, imaginative and "
                  "rich in figurative language.",
}
DSP_RESPONSES = (*DSP_CRITERIA, "normal")

# Hub datasets whose format is known by name; other sources are recognized from their columns.
HUB_FORMATS = {
    "Anthropic/hh-rlhf": "hh-rlhf",
    "stanfordnlp/SHP": "shp",
    "microsoft/rpr": "rpr",
    "nvidia/HelpSteer2": "helpsteer2",
    "hendrydong/preference_700K": "preference-700k",
    "namkoong-lab/PersonalLLM": "personal-llm",
}

# Plain-text dialogue encodings: the turn marker of each speaker, captured as the speaker's name.
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
STEAMSHP_TURN = re.compile(r"(?:^|\n\n)(HUMAN|ASSISTANT): ")  # SHP's encoding of dialogue histories (SteamSHP)
WEBGPT_TURN = re.compile(r"(?:^|\n+)## (Human|Assistant):\n")
SPEAKER_ROLES = {"human": "user", "assistant": "assistant"}


ROLES = ("system", "user", "assistant")
# An implicit standard prompt (the characters `chosen` and `rejected` share) shorter than this is a coincidence.
IMPLICIT_PROMPT_MIN_CHARACTERS = 4


class Skip(NamedTuple):
    """A candidate pair a format's recipe drops; `reason` names what was dropped, in the plural, and `fix` (if any)
    says what the user can change, shown when a source leaves no pair at all."""

    reason: str
    fix: str = ""


# Field access: a record that does not fit its schema is an error naming the record and the field.


def _as_text(value, index: int, field: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"record {index}: field {field!r} must be text, got {type(value).__name__}.")
    return value


def _as_optional_text(value, index: int, field: str) -> str | None:
    return None if value is None else _as_text(value, index, field)


def _as_score(value, index: int, field: str) -> float | None:
    """A number, or None when it is missing (null, or NaN as parquet and pandas write a missing float): a missing
    number is never compared (NaN compares False to everything, which would silently reverse a label)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"record {index}: field {field!r} must be a number, got {type(value).__name__}.")
    return None if math.isnan(value) else value


def _as_messages(value, index: int, field: str) -> list:
    if not isinstance(value, list) or not value:
        raise InputError(f"record {index}: field {field!r} must be a non-empty list of chat messages, got "
                         f"{type(value).__name__}.")
    messages = []
    for position, message in enumerate(value):
        if not isinstance(message, dict):
            raise InputError(f"record {index}: field '{field}[{position}]' must be a message "
                             f"{{'role', 'content'}}, got {type(message).__name__}.")
        message = {key: _as_text(message.get(key), index, f"{field}[{position}].{key}") for key in ("role", "content")}
        if message["role"] not in ROLES:
            raise InputError(f"record {index}: field '{field}[{position}].role' must be one of {', '.join(ROLES)}, "
                             f"got {message['role']!r}.")
        messages.append(message)
    return messages


def _as_prompt(value, index: int, field: str = "prompt") -> list:
    """An explicit prompt: chat messages that do not end with an assistant turn (the compared turn comes next)."""
    prompt = _as_messages(value, index, field)
    if prompt[-1]["role"] == "assistant":
        raise InputError(f"record {index}: field '{field}[{len(prompt) - 1}].role' is 'assistant', but a prompt must "
                         f"not end with an assistant turn (the compared responses are the next assistant turn); "
                         f"end it with the user turn they answer.")
    return prompt


def _user_turn(text: str) -> list:
    return [{"role": "user", "content": text}]


# Pairs.


def _pair(prompt: list, chosen: str, rejected: str, **metadata) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "category": None, "attribute": None,
            "criterion": None, "user": None, **metadata}


def _with_criterion(prompt: list, criterion: str) -> list:
    """The prompt with `criterion` appended to its last message (`CRITERION_TEMPLATE`)."""
    *history, last = prompt
    return [*history, {"role": last["role"],
                       "content": CRITERION_TEMPLATE.format(prompt=last["content"], criterion=criterion)}]


def _attribute_pair(prompt, chosen, rejected, attribute, criterion, append_criterion: bool) -> dict:
    """A pair labelled under one attribute. The attribute is also the pair's category: it is the latent structure
    of attribute-conditioned data (what the router should recover without seeing the criterion)."""
    if append_criterion:
        prompt = _with_criterion(prompt, criterion)
    return _pair(prompt, chosen, rejected, category=attribute, attribute=attribute, criterion=criterion)


def _parse_transcript(text: str, turn: re.Pattern, index: int, field: str) -> list:
    """Splits a plain-text dialogue into chat messages at its turn markers, keeping every turn's text verbatim."""
    parts = turn.split(text)
    if parts[0] or len(parts) == 1:
        raise InputError(f"record {index}: field {field!r} does not open with a turn marker ({turn.pattern!r}).")
    return [{"role": SPEAKER_ROLES[speaker.lower()], "content": content}
            for speaker, content in zip(parts[1::2], parts[2::2])]


def _shared_prompt_pair(chosen: list, rejected: list, **metadata) -> dict | Skip:
    """The pair two full conversations compare: their shared turns, then each one's final assistant turn. The shared
    turns must end with a user turn (the one both final turns answer); other pairs are dropped (counted)."""
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return Skip("pairs whose transcripts do not end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        return Skip("pairs whose transcripts differ before the last assistant turn")
    if len(chosen) > 1 and chosen[-2]["role"] != "user":
        return Skip("pairs whose shared turns do not end with a user turn")
    return _pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], **metadata)


def _unusable(pair: dict) -> str | None:
    """Why a pair carries no preference signal, or None: checked for every format. A prompt is empty when all its
    messages, or its last one, are whitespace; responses equal up to surrounding whitespace are identical (chat
    templates trim message content, so the model would see the same text)."""
    prompt = pair["prompt"]
    if not prompt or not prompt[-1]["content"].strip() or not any(message["content"].strip() for message in prompt):
        return "pairs with an empty prompt"
    if not pair["chosen"].strip() or not pair["rejected"].strip():
        return "pairs with an empty response"
    if pair["chosen"].strip() == pair["rejected"].strip():
        return "pairs with identical responses"
    return None


# Adapters: each reads a `datasets.Dataset` in one format and yields pairs (dicts) and `Skip`s.


def _trl_pairs(dataset: Dataset, *, conversational: bool | None = None) -> Iterator[dict | Skip]:
    """TRL's preference type (https://huggingface.co/docs/trl/dataset_formats), standard or conversational, with an
    explicit `prompt` column or an implicit prompt shared by `chosen` and `rejected`.

    An implicit prompt is extracted as TRL's `extract_prompt` does: the longest common prefix (of characters, or of
    messages), with a space just before the first difference left to the completions. A standard prompt becomes one
    user message. A conversational completion must be one assistant message, since a pair compares one turn; an
    explicit conversational prompt must not end with an assistant turn (an error), an implicit one must end with a
    user turn (others are dropped, counted). `conversational=True` rejects standard (plain-text) records.

    Two plain texts share a beginning by chance ("I like it" / "I hate it" share "I "), so a standard implicit prompt
    is kept only if it looks like one (the choice made here, TRL keeps any prefix): it holds at least
    `IMPLICIT_PROMPT_MIN_CHARACTERS` (4) non-whitespace characters and ends at a word boundary, i.e. it does not end
    with a letter or digit that a completion's first character continues ("The sky is" + " blue." and "2+2=" + "4"
    are prompts; "I" + " like it" (too short) and "I l" + "ike"/"ove" (inside a word) are not). Other pairs are
    dropped (counted), as are pairs whose texts are identical or where the prompt takes a whole response (an empty
    response); a file left with no pair is an error that asks for a `prompt` column. The rule is a heuristic: a file
    whose responses share longer openings by chance ("I'm sorry, but") needs an explicit `prompt` column.

    Columns named like the pair metadata (`category`, `attribute`, `criterion`, `user`) are kept: TRL passes extra
    columns through, and category metrics and per-user routers need them.
    """
    explicit = "prompt" in dataset.column_names
    metadata = [name for name in PAIR_METADATA if name in dataset.column_names]
    for index, record in enumerate(dataset):
        if isinstance(record["chosen"], list):
            pair = _conversational_pair(record, index, explicit)
        elif conversational:
            raise InputError(f"record {index}: field 'chosen' must be a list of chat messages, got "
                             f"{type(record['chosen']).__name__}.")
        else:
            pair = _standard_pair(record, index, explicit)
        if isinstance(pair, dict):
            pair.update({name: _as_optional_text(record[name], index, name) for name in metadata})
        yield pair


def _conversational_pair(record: dict, index: int, explicit: bool) -> dict | Skip:
    chosen = _as_messages(record["chosen"], index, "chosen")
    rejected = _as_messages(record["rejected"], index, "rejected")
    if not explicit:
        return _shared_prompt_pair(chosen, rejected)
    prompt = _as_prompt(record["prompt"], index)
    if len(chosen) != 1 or len(rejected) != 1 or {chosen[0]["role"], rejected[0]["role"]} != {"assistant"}:
        return Skip("pairs whose completions are not one assistant message each")
    return _pair(prompt, chosen[0]["content"], rejected[0]["content"])


def _standard_pair(record: dict, index: int, explicit: bool) -> dict | Skip:
    chosen = _as_text(record["chosen"], index, "chosen")
    rejected = _as_text(record["rejected"], index, "rejected")
    if explicit:
        return _pair(_user_turn(_as_text(record["prompt"], index, "prompt")), chosen, rejected)
    if chosen.strip() == rejected.strip():
        return Skip("pairs with identical responses")
    shared = _common_prefix_length(chosen, rejected)
    if 0 < shared < min(len(chosen), len(rejected)) and chosen[shared - 1] == " ":
        shared -= 1
    prompt, completions = chosen[:shared], (chosen[shared:], rejected[shared:])
    if not _is_implicit_prompt(prompt, completions):
        return Skip(f"pairs whose responses share no prompt (a common beginning of under "
                    f"{IMPLICIT_PROMPT_MIN_CHARACTERS} characters or cut inside a word)",
                    fix="give the prompt in a 'prompt' column (TRL's explicit prompt format)")
    return _pair(_user_turn(prompt), *completions)


def _common_prefix_length(first, second) -> int:
    return next((n for n, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))


def _is_implicit_prompt(prompt: str, completions: tuple) -> bool:
    """Whether the text two responses share looks like a prompt (see `_trl_pairs`)."""
    if len("".join(prompt.split())) < IMPLICIT_PROMPT_MIN_CHARACTERS:
        return False
    inside_word = prompt[-1].isalnum() and any(completion[:1].isalnum() for completion in completions)
    return not inside_word


def _preference_700k_pairs(dataset: Dataset) -> Iterator[dict | Skip]:
    """preference-700K (Dong et al. 2024; the paper's real-world data): TRL's conversational format with an implicit
    prompt, `chosen` and `rejected` being whole conversations that end with the compared assistant turn."""
    return _trl_pairs(dataset, conversational=True)


def _hh_rlhf_pairs(dataset: Dataset) -> Iterator[dict | Skip]:
    """Anthropic HH-RLHF: two transcripts `\\n\\nHuman: ...\\n\\nAssistant: ...` that share every turn but the last
    assistant turn. Turns are split at the `\\n\\nHuman: ` / `\\n\\nAssistant: ` markers and kept verbatim; pairs
    whose transcripts differ before the last assistant turn are dropped (counted). Unlike TRL's HH script, which
    cuts at the longest common character prefix, this never splices a half-shared turn into the prompt. HH files
    carry no subset label: give it with `load_pairs(..., category="helpful")` (or "harmless"). Copies that lost the
    leading blank line (stripped) or use Windows line ends are read the same way."""
    for index, record in enumerate(dataset):
        chosen, rejected = (_parse_transcript(_hh_text(_as_text(record[side], index, side)), HH_TURN, index, side)
                            for side in ("chosen", "rejected"))
        yield _shared_prompt_pair(chosen, rejected)


def _hh_text(text: str) -> str:
    """An HH transcript in its released form: `\n` line ends, opening with `\n\nHuman: `."""
    text = text.replace("\r\n", "\n")
    return text if text.startswith("\n\n") else "\n\n" + text.lstrip("\n")


def _shp_pairs(dataset: Dataset, *, seed: int, one_pair_per_post: bool = False) -> Iterator[dict | Skip]:
    """Stanford SHP (paper App. A): `human_ref_A`/`human_ref_B` answer `history`; `labels == 1` means A is preferred.

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
    outcomes = [_shp_pair(record, index, has_likes) for index, record in enumerate(dataset)]
    if one_pair_per_post:
        outcomes = _one_pair_per_post(outcomes, list(dataset["post_id"]), seed)
    yield from outcomes


def _shp_pair(record: dict, index: int, has_likes: bool) -> dict | Skip:
    domain = _as_text(record["domain"], index, "domain")
    subset, _, split = domain.rpartition("_")
    domain = subset if split in SHP_SPLITS else domain
    if domain in SHP_EXCLUDED_DOMAINS:
        return Skip(f"pairs from the excluded domains {', '.join(SHP_EXCLUDED_DOMAINS)}")
    likes = [_as_score(record[f"score_{side}"], index, f"score_{side}") for side in "AB"] if has_likes else []
    if None in likes:
        return Skip("pairs with a missing (null or NaN) score_A or score_B")
    if likes and min(likes) <= SHP_MIN_LIKES:
        return Skip(f"pairs with a response of {SHP_MIN_LIKES} likes or fewer")
    label = _as_score(record["labels"], index, "labels")
    if label is None:
        return Skip("pairs with a missing (null or NaN) label")
    if label not in (0, 1):
        raise InputError(f"record {index}: field 'labels' must be 0 or 1, got {record['labels']!r}.")
    a = _as_text(record["human_ref_A"], index, "human_ref_A")
    b = _as_text(record["human_ref_B"], index, "human_ref_B")
    chosen, rejected = (a, b) if label == 1 else (b, a)
    history = _as_text(record["history"], index, "history")
    prompt = (_parse_transcript(history, STEAMSHP_TURN, index, "history") if STEAMSHP_TURN.match(history)
              else _user_turn(history))
    if prompt[-1]["role"] != "user":
        return Skip("pairs whose dialogue history does not end with a user turn")
    return _pair(prompt, chosen, rejected, category=SHP_CATEGORIES.get(domain, domain))


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


def _rpr_pairs(dataset: Dataset, *, append_criterion: bool = True) -> Iterator[dict | Skip]:
    """RPR (Pitis et al. 2024; paper App. A): `response_a` is preferred under `criteria_x` (attribute `category_x`),
    `response_b` under `criteria_y` (attribute `category_y`). Each record becomes these two attribute-conditioned
    pairs; the criterion is appended to the prompt (the paper's training input) unless `append_criterion=False`
    (its steering evaluation, which removes it). The evaluation attributes are `RPR_EVALUATION_ATTRIBUTES`."""
    for index, record in enumerate(dataset):
        prompt = _user_turn(_as_text(record["prompt"], index, "prompt"))
        a = _as_text(record["response_a"], index, "response_a")
        b = _as_text(record["response_b"], index, "response_b")
        for chosen, rejected, side in ((a, b, "x"), (b, a, "y")):
            attribute = _as_text(record[f"category_{side}"], index, f"category_{side}")
            criterion = _as_text(record[f"criteria_{side}"], index, f"criteria_{side}")
            yield _attribute_pair(prompt, chosen, rejected, attribute, criterion, append_criterion)


def _helpsteer2_pairs(dataset: Dataset, *, append_criterion: bool = False,
                      drop_unanimous: bool = False) -> Iterator[dict | Skip]:
    """HelpSteer2 (MiCRo App. B.2): responses rated 0-4 on five attributes; two responses per prompt.

    Every two responses to the same prompt give, per attribute, a pair whose chosen response has the higher rating;
    equal ratings give no pair (counted), nor does a missing (null or NaN) rating. `drop_unanimous=True` drops
    response pairs where one response is rated strictly higher on all five attributes (MiCRo does so for its training
    set only; a pair with a missing rating is never unanimous). The criterion is MiCRo's
    Table 6 context, appended to the prompt only with `append_criterion=True` (MiCRo trains its mixture on the bare
    prompts and uses the contexts for routing). Multi-turn prompts stay one user message, as HelpSteer2 stores them.
    """
    responses = defaultdict(list)
    for index, record in enumerate(dataset):
        ratings = {attribute: _as_score(record[attribute], index, attribute) for attribute in HELPSTEER2_CRITERIA}
        responses[_as_text(record["prompt"], index, "prompt")].append(
            (_as_text(record["response"], index, "response"), ratings))
    for prompt, candidates in responses.items():
        for (first, first_ratings), (second, second_ratings) in itertools.combinations(candidates, 2):
            differences = {name: None if first_ratings[name] is None or second_ratings[name] is None
                           else first_ratings[name] - second_ratings[name] for name in HELPSTEER2_CRITERIA}
            if drop_unanimous and _unanimous(differences.values()):
                yield Skip("response pairs rated unanimously on every attribute")
                continue
            for attribute, difference in differences.items():
                if difference is None or math.isnan(difference):  # inf - inf is NaN
                    yield Skip("attribute pairs with a missing (null or NaN) rating")
                    continue
                if difference == 0:
                    yield Skip("attribute pairs with equal ratings")
                    continue
                chosen, rejected = (first, second) if difference > 0 else (second, first)
                yield _attribute_pair(_user_turn(prompt), chosen, rejected, attribute, HELPSTEER2_CRITERIA[attribute],
                                      append_criterion)


def _unanimous(differences) -> bool:
    """Whether one response is rated strictly higher on every attribute (never, with a rating missing)."""
    signs = {None if difference is None else (difference > 0) - (difference < 0) for difference in differences}
    return signs in ({1}, {-1})


def dirichlet_users(sources, num_users: int = 5, *, alpha: float = 0.3, seed: int = 0) -> dict:
    """Simulated users (paper App. H): `{"user_<i>": {source: weight}}`, each weight vector a seeded draw from
    Dirichlet(alpha) over `sources` (normalized Gamma(alpha, 1) draws)."""
    rng = random.Random(seed)
    users = {}
    for number in range(num_users):
        draws = [rng.gammavariate(alpha, 1.0) for _ in sources]
        users[f"user_{number}"] = {source: draw / sum(draws) for source, draw in zip(sources, draws)}
    return users


def personal_llm_users(num_users: int = 5, *, alpha: float = 0.3, seed: int = 0) -> dict:
    """Simulated PersonalLLM users: Dirichlet(alpha) weights over `PERSONAL_LLM_REWARD_MODELS` (`dirichlet_users`)."""
    return dirichlet_users(PERSONAL_LLM_REWARD_MODELS, num_users, alpha=alpha, seed=seed)


def _personal_llm_pairs(dataset: Dataset, *, seed: int, num_users: int = 5, alpha: float = 0.3,
                        users: dict | None = None) -> Iterator[dict | Skip]:
    """PersonalLLM (paper App. H): each prompt has responses `response_<k>` scored by ten reward models.

    A user scores a response by the weighted sum of the ten reward models' scores, each standardized first (z-score
    over every response in the loaded data: PersonalLLM standardizes with its train-set mean and deviation, which
    this equals on the train split). Each (prompt, user) gives one pair: the user's best response over the worst.
    Users are `personal_llm_users(num_users, alpha=alpha, seed=seed)` unless given as `users` (reuse the same users
    for the adaptation and evaluation splits). Records with a missing (null or NaN) score are dropped (counted) and
    left out of the standardization.
    """
    users = users or personal_llm_users(num_users, alpha=alpha, seed=seed)
    for user, weights in users.items():
        unknown = sorted(set(weights) - set(PERSONAL_LLM_REWARD_MODELS))
        if unknown:
            raise InputError(f"user {user!r} weights unknown reward models {unknown}.")
    responses = [name for name in dataset.column_names if re.fullmatch(r"response_\d+", name)]
    scores = {(response, model): f"{response}_{model}" for response in responses
              for model in PERSONAL_LLM_REWARD_MODELS}
    missing = [column for column in scores.values() if column not in dataset.column_names]
    if missing:
        raise InputError(f"missing reward column(s) {missing}.")
    records = []  # per record: its prompt, its response texts, and each response's scores (None where one is missing)
    for index, record in enumerate(dataset):
        records.append((_user_turn(_as_text(record["prompt"], index, "prompt")),
                        [_as_text(record[response], index, response) for response in responses],
                        [{model: _as_score(record[scores[response, model]], index, scores[response, model])
                          for model in PERSONAL_LLM_REWARD_MODELS} for response in responses]))
    standardize = {model: _standardizer([values[model] for _, _, rows in records for values in rows
                                         if values[model] is not None]) for model in PERSONAL_LLM_REWARD_MODELS}
    for prompt, texts, rows in records:
        if any(value is None for values in rows for value in values.values()):
            yield Skip("records with missing (null or NaN) reward scores")
            continue
        standardized = [{model: standardize[model](values[model]) for model in PERSONAL_LLM_REWARD_MODELS}
                        for values in rows]
        for user, weights in users.items():
            utility = [sum(weights.get(model, 0.0) * z[model] for model in PERSONAL_LLM_REWARD_MODELS)
                       for z in standardized]
            if any(math.isnan(value) for value in utility):
                yield Skip("(prompt, user) pairs whose utility is not a number (an infinite reward score)")
                continue
            best = max(range(len(texts)), key=utility.__getitem__)
            worst = min(range(len(texts)), key=utility.__getitem__)
            if utility[best] == utility[worst]:
                yield Skip("(prompt, user) pairs where every response scores the same")
                continue
            yield _pair(prompt, texts[best], texts[worst], user=user)


def _standardizer(values: list) -> Callable[[float], float]:
    if not values:  # every score of this model is missing: every record is dropped, nothing is standardized
        return lambda value: value
    mean = sum(values) / len(values)
    deviation = (sum((value - mean) ** 2 for value in values) / len(values)) ** 0.5 or 1.0
    return lambda value: (value - mean) / deviation


def _dsp_pairs(dataset: Dataset, *, append_criterion: bool = True) -> Iterator[dict | Skip]:
    """Domain-Specific Preference: each query has a response written for each of the domains academy, business,
    entertainment and literature, and a `normal` one. The domain is the attribute (and the category): under domain d
    the response for d is preferred over each of the other four, so a query gives 4 domains x 4 = 16 pairs, in the
    order of `DSP_RESPONSES`. The criterion is `DSP_CRITERIA[d]`, appended to the prompt unless
    `append_criterion=False` (without it a query's pairs under two domains contradict each other)."""
    for index, record in enumerate(dataset):
        prompt = _user_turn(_as_text(record["query"], index, "query"))
        responses = record["responses"]
        if not isinstance(responses, dict):
            raise InputError(f"record {index}: field 'responses' must map each domain to its response, got "
                             f"{type(responses).__name__}.")
        texts = {name: _as_text(responses.get(name), index, f"responses.{name}") for name in DSP_RESPONSES}
        for domain, criterion in DSP_CRITERIA.items():
            for other in DSP_RESPONSES:
                if other != domain:
                    yield _attribute_pair(prompt, texts[domain], texts[other], domain, criterion, append_criterion)


def _webgpt_pairs(dataset: Dataset) -> Iterator[dict | Skip]:
    """WebGPT comparisons as released in `{"text": [a, b], "score": [sa, sb]}` records, each text a transcript
    `## Human:\\n...\\n\\n## Assistant:\\n...`; the higher score is preferred and equal scores (ties) are dropped
    (counted), as are pairs with a missing (null or NaN) score. Turn texts are kept as written, without the blank
    lines around the markers."""
    for index, record in enumerate(dataset):
        texts, scores = record["text"], record["score"]
        if not isinstance(texts, list) or len(texts) != 2:
            raise InputError(f"record {index}: field 'text' must hold two transcripts.")
        if not isinstance(scores, list) or len(scores) != 2:
            raise InputError(f"record {index}: field 'score' must hold two scores.")
        first, second = (_as_score(score, index, f"score[{side}]") for side, score in enumerate(scores))
        if first is None or second is None:
            yield Skip("pairs with a missing (null or NaN) score")
            continue
        if first == second:
            yield Skip("ties (equal scores)")
            continue
        turns = [_parse_transcript(_as_text(text, index, f"text[{side}]"), WEBGPT_TURN, index, f"text[{side}]")
                 for side, text in enumerate(texts)]
        yield _shared_prompt_pair(*(turns if first > second else turns[::-1]))


@dataclass(frozen=True)
class Adapter:
    """A dataset format: the function turning its records into pairs, the columns it needs, and (for formats that
    share their columns with another) a test on the first record that tells them apart."""

    pairs: Callable[..., Iterator[dict | Skip]]
    columns: tuple
    recognizes: Callable[[dict], bool] | None = None

    def option_names(self) -> list:
        return [name for name in inspect.signature(self.pairs).parameters if name not in ("dataset", "seed")]

    def matches(self, dataset: Dataset) -> bool:
        if not set(self.columns) <= set(dataset.column_names):
            return False
        return self.recognizes is None or (len(dataset) > 0 and self.recognizes(dataset[0]))

    def __call__(self, dataset: Dataset, *, seed: int = 0, **options) -> Iterator[dict | Skip]:
        unknown = set(options) - set(self.option_names())
        if unknown:
            raise InputError(f"unknown option(s) {sorted(unknown)}; this format takes {self.option_names()}.")
        missing = [column for column in self.columns if column not in dataset.column_names]
        if missing:
            raise InputError(f"missing column(s) {missing}; the dataset has {dataset.column_names}: add them, or "
                             f"pass the dataset's own format (one of {list(FORMATS)}).")
        if "seed" in inspect.signature(self.pairs).parameters:
            options["seed"] = seed
        return self.pairs(dataset, **options)


def _hf_smoe_pairs(dataset: Dataset) -> Iterator[dict | Skip]:
    """Pairs already in the common schema (saved from `load_pairs`, or `hf_smoe.synthetic`): validated, kept as is."""
    metadata = [name for name in PAIR_METADATA if name in dataset.column_names]
    for index, record in enumerate(dataset):
        yield _pair(_as_prompt(record["prompt"], index), _as_text(record["chosen"], index, "chosen"),
                    _as_text(record["rejected"], index, "rejected"),
                    **{name: _as_optional_text(record[name], index, name) for name in metadata})


def _is_common_schema(record: dict) -> bool:
    return isinstance(record["prompt"], list) and isinstance(record["chosen"], str)


def _is_hh_transcript(record: dict) -> bool:
    return isinstance(record["chosen"], str) and _hh_text(record["chosen"]).startswith("\n\nHuman: ")


FORMATS = {
    "trl": Adapter(_trl_pairs, ("chosen", "rejected")),
    "hh-rlhf": Adapter(_hh_rlhf_pairs, ("chosen", "rejected"), recognizes=_is_hh_transcript),
    "shp": Adapter(_shp_pairs, ("history", "human_ref_A", "human_ref_B", "labels", "domain")),
    "rpr": Adapter(_rpr_pairs, ("prompt", "response_a", "response_b", "criteria_x", "criteria_y", "category_x",
                                "category_y")),
    "helpsteer2": Adapter(_helpsteer2_pairs, ("prompt", "response", *HELPSTEER2_CRITERIA)),
    "preference-700k": Adapter(_preference_700k_pairs, ("chosen", "rejected")),
    "personal-llm": Adapter(_personal_llm_pairs, ("prompt", "response_1", "response_2")),
    "dsp": Adapter(_dsp_pairs, ("query", "responses")),
    "webgpt": Adapter(_webgpt_pairs, ("text", "score")),
    "hf_smoe": Adapter(_hf_smoe_pairs, ("prompt", "chosen", "rejected"), recognizes=_is_common_schema),
}
# Most specific first; preference-700k reads like TRL's conversational format and is known by its Hub name.
DETECTION_ORDER = ("personal-llm", "rpr", "helpsteer2", "shp", "dsp", "webgpt", "hf_smoe", "hh-rlhf", "trl")
LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json"}


def load_pairs(source, format: str | None = None, *, split: str = "train", max_pairs: int | None = None,
               seed: int = 0, category: str | None = None, hub_options: dict | None = None, **options) -> Dataset:
    """Loads preference pairs in the common schema (`PAIR_FEATURES`) from any supported format.

    Args:
        source: a Hub dataset name (read with `datasets.load_dataset(source, split=split)`), a local file or folder
            of json / jsonl / jsonl.gz / JSON-array / parquet files (read whole with `datasets.load_dataset("json"
            or "parquet", data_files=...)`), or a `datasets.Dataset` already loaded (e.g. a Hub subset).
        format: one of `FORMATS`; by default known from the Hub name (`HUB_FORMATS`) or detected from the columns.
        split: the Hub split to read.
        hub_options: extra `datasets.load_dataset` arguments for a Hub name: `data_dir` or `data_files` to read
            one subset (e.g. `{"data_dir": "helpful-base"}` for Anthropic/hh-rlhf), `name`, `revision`, `token`.
        max_pairs: keep a seeded random subset of this many pairs (>= 1), in their original order.
        seed: seeds `max_pairs` and the formats that draw (SHP's one pair per post, PersonalLLM's users).
        category: the category of every pair the format leaves without one (a one-domain source, e.g. HH helpful).
        **options: the format's options (see its adapter, e.g. `append_criterion` for rpr and dsp).

    Raises `InputError` (one line naming the source, and the record and field or the file and line) for input the
    user can fix, including a source that leaves no pair; dropped pairs are counted in one warning per reason.
    """
    if max_pairs is not None and (isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1):
        raise InputError(f"max_pairs: must be >= 1 (the number of pairs to keep; leave it unset to keep every pair), "
                         f"got {max_pairs!r}.")
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format {format!r}; formats are {list(FORMATS)}.")
    dataset = _load_source(source, split, hub_options or {})
    if len(dataset) == 0:
        raise InputError(f"dataset {_describe(source)}: holds no records; give a file or split with data.")
    if format is None:
        format = HUB_FORMATS.get(source) if isinstance(source, str) else None
        format = format or _detect_format(dataset, source)
    try:
        pairs, dropped = _collect(FORMATS[format](dataset, seed=seed, **options))
    except InputError as error:
        raise InputError(f"{format} ({_describe(source)}): {error}") from None
    if not pairs:
        fixes = "".join(f"; {fix}" for fix in dict.fromkeys(skip.fix for skip in dropped if skip.fix))
        what = ", ".join(f"{count} {skip.reason}" for skip, count in dropped.items()) or "nothing"
        raise InputError(f"{format} ({_describe(source)}): no usable pair in {len(dataset)} records (dropped {what})"
                         f"{fixes}.")
    for skip, count in dropped.items():
        warnings.warn(f"{format}: dropped {count} {skip.reason}.", stacklevel=2)
    if max_pairs is not None and max_pairs < len(pairs):
        pairs = [pairs[index] for index in sorted(random.Random(seed).sample(range(len(pairs)), max_pairs))]
    if category is not None:
        pairs = [{**pair, "category": pair["category"] or category} for pair in pairs]
    return Dataset.from_dict({column: [pair[column] for pair in pairs] for column in PAIR_COLUMNS},
                             features=PAIR_FEATURES)


def _describe(source) -> str:
    return "in-memory dataset" if isinstance(source, Dataset) else str(source)


def _load_source(source, split: str, hub_options: dict) -> Dataset:
    if isinstance(source, Dataset):
        return source
    if isinstance(source, DatasetDict):
        raise InputError(f"dataset: got a DatasetDict with splits {list(source)}; pass one split, e.g. "
                         f"dataset[{next(iter(source), 'train')!r}].")
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"dataset: expected a Hub name, a file or folder path, or a datasets.Dataset; got "
                         f"{type(source).__name__}. Wrap records with datasets.Dataset.from_list(records) (or "
                         f"Dataset.from_pandas(frame)).")
    path = Path(source).expanduser()
    if not path.exists():
        if _builder(path) or str(source).startswith((".", "/", "~")):
            raise InputError(f"dataset: no such file {source}; give an existing local file or a Hub name.")
        return _load_hub(str(source), split, hub_options)
    files = sorted(p for p in path.iterdir() if _builder(p) and p.is_file()) if path.is_dir() else [path]
    if not files:
        raise InputError(f"dataset {source}: the folder holds no data file; put json, jsonl, jsonl.gz or parquet "
                         f"files ({', '.join(LOCAL_BUILDERS)}) in it.")
    builders = {_builder(file) for file in files}
    if len(builders) != 1 or None in builders:
        raise InputError(f"dataset {source}: expected json, jsonl, jsonl.gz or parquet file(s) of one kind "
                         f"({', '.join(LOCAL_BUILDERS)}), found {[file.name for file in files]}; keep one kind of "
                         f"file per folder, or give one file.")
    builder = builders.pop()
    for file in files:  # cheap checks first: datasets fails on these with a traceback or a bare StopIteration
        problem = "the file is empty (0 bytes); give a file with data" if file.stat().st_size == 0 else (
            _parquet_problem(file) if builder == "parquet" else None)
        if problem:
            raise InputError(f"dataset {file}: {problem}.")
    if builder == "parquet" and len(files) > 1:
        _raise_for_mixed_columns(files, {file: pyarrow.parquet.read_schema(file).names for file in files})
    try:
        dataset = load_dataset(builder, data_files=[str(file) for file in files], split="train")
        dataset.data.table.validate(full=True)  # text that is not UTF-8 may load, and fail only when read
        return dataset
    except (DatasetsError, pyarrow.ArrowException, ValueError, EOFError, OSError, zlib.error, StopIteration,
            RuntimeError) as error:
        # The file is to blame only if reading it ourselves finds what is wrong; anything else (a full disk while
        # datasets writes its cache: an OSError with an errno) is re-raised as it is.
        if builder == "json" and not (isinstance(error, OSError) and error.errno):
            columns = {}
            for file in files:
                problem, columns[file] = _json_problem(file)
                if problem:
                    raise InputError(f"dataset {file}: {problem}.") from error
            _raise_for_mixed_columns(files, columns)
        raise


def _load_hub(name: str, split: str, hub_options: dict) -> Dataset:
    try:
        return load_dataset(name, split=split, **hub_options)
    except ConnectionError as error:  # offline (HF_HUB_OFFLINE=1) or the Hub unreachable; not cached locally
        offline = " (HF_HUB_OFFLINE is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise InputError(f"dataset {name!r}: cannot load it from the Hugging Face Hub{offline}: it is neither a local "
                         f"file or folder nor in the local cache ({_one_line(error)}); check the path or name, or go "
                         f"online to download it once.") from error


def _one_line(error) -> str:
    return " ".join(str(error).split())


def _parquet_problem(file: Path) -> str | None:
    try:
        pyarrow.parquet.read_schema(file)
    except (pyarrow.ArrowException, OSError) as error:
        return (f"not a readable parquet file ({_one_line(error)}); give a parquet file, or a .json/.jsonl file "
                f"with the matching extension")
    return None


def _raise_for_mixed_columns(files: list, columns: dict) -> None:
    """The error for a folder whose files have different columns (datasets cannot concatenate them)."""
    first = files[0]
    for file in files[1:]:
        if columns.get(file) is not None and columns.get(first) is not None and \
                sorted(columns[file]) != sorted(columns[first]):
            raise InputError(f"dataset {file.parent}: its files have different columns ({first.name}: "
                             f"{sorted(columns[first])}, {file.name}: {sorted(columns[file])}); a folder must hold "
                             f"one dataset: move the other files out, or load each file on its own.")


def _open_text(file: Path):
    return gzip.open(file, "rt", encoding="utf-8") if file.name.endswith(".gz") else open(file, encoding="utf-8")


def _json_problem(file: Path) -> tuple:
    """What makes a json/jsonl(.gz) file unreadable as records, read line by line with `json.loads` (None if we find
    nothing), and the columns of its records (None if unknown)."""
    lines = []
    try:
        with _open_text(file) as handle:
            for line in handle:
                lines.append(line)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        return (f"the gzip data is corrupt or cut off after line {len(lines)} ({_one_line(error)}); download or "
                f"compress the file again"), None
    except UnicodeDecodeError as error:
        return f"line {len(lines) + 1} is not UTF-8 text ({error.reason}); save the file as UTF-8", None
    text = "".join(lines)
    if not text.strip():
        return "the file holds no records (only whitespace); give a file with data", None
    if text.lstrip().startswith("["):  # one JSON document: an array of records
        try:
            document = json.loads(text, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as error:
            line = getattr(error, "lineno", None)
            return (f"invalid JSON{f' at line {line}' if line else ''} ({_one_line(getattr(error, 'msg', error))}); "
                    f"a .json file holds a JSON array of records (objects) or one JSON object per line"), None
        records = list(enumerate(document, 1))
        where = "item"
    else:
        records, where = [], "line"
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line, parse_constant=_no_constant)))
            except (json.JSONDecodeError, ValueError) as error:
                return (f"line {number} is not valid JSON ({_one_line(getattr(error, 'msg', error))}); fix or delete "
                        f"that line (JSON Lines: one JSON object per line)"), None
    if not records:
        return "the file holds no records (an empty JSON array); give a file with data", None
    for number, record in records:
        if not isinstance(record, dict):
            return (f"{where} {number} is a JSON {type(record).__name__}, not a record (an object of named "
                    f"fields); write one object per record"), None
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return (f"{where} {number} holds text that is not valid Unicode (a lone surrogate escape such as "
                    f"\\ud800); fix or delete that {where}"), None
    kinds = {}
    for number, record in records:  # a field whose JSON type changes from record to record
        for field, value in record.items():
            if value is None:
                continue
            kind, first = _json_kind(value), kinds.setdefault(field, (_json_kind(value), number))
            if kind != first[0]:
                return (f"{where} {number}: field {field!r} is a {kind} where {where} {first[1]} has a {first[0]}; "
                        f"give the field one type in every record"), None
    return None, sorted({field for _, record in records for field in record})


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON; write null for a missing number")


def _json_kind(value) -> str:
    return {bool: "boolean", str: "string", list: "list", dict: "object"}.get(type(value), "number")


def _builder(path: Path) -> str | None:
    return next((builder for suffix, builder in LOCAL_BUILDERS.items() if path.name.endswith(suffix)), None)


def _detect_format(dataset: Dataset, source) -> str:
    for name in DETECTION_ORDER:
        if FORMATS[name].matches(dataset):
            return name
    if isinstance(source, (str, Path)) and Path(source).is_file() and _builder(Path(source)) == "json":
        problem, _ = _json_problem(Path(source))  # e.g. a JSON array of strings, which datasets reads as `text`
        if problem:
            raise InputError(f"dataset {source}: {problem}.")
    raise InputError(f"cannot tell the format of {_describe(source)} from its columns {dataset.column_names}; "
                     f"pass format= one of {list(FORMATS)}.")


def _collect(outcomes) -> tuple:
    """The adapter's pairs, less those it skipped or that carry no preference signal, and the count of each kind of
    `Skip` dropped (`load_pairs` warns once per reason)."""
    pairs, dropped = [], Counter()
    for outcome in outcomes:
        skip = outcome if isinstance(outcome, Skip) else _unusable(outcome)
        if skip:
            dropped[Skip(skip) if isinstance(skip, str) else skip] += 1
        else:
            pairs.append(outcome)
    return pairs, dropped


def split_pairs(dataset: Dataset, *, seed: int = 0, validation: float = 0.1, test: float = 0.1,
                stratify: str | None = "category", group_by: str | None = None) -> DatasetDict:
    """A seeded train/validation/test split, stratified by `stratify`, optionally keeping groups together.

    Procedure: the units of the split are single pairs, or, with `group_by` (e.g. `"prompt"`), the sets of pairs
    sharing that column's value, so that no prompt is seen in two splits. Units are grouped by the `stratify` value
    of their first pair (one group when `stratify` is None, the column is absent or all its values are None;
    otherwise None is a group of its own). Groups are visited in sorted order; the units of each are shuffled with
    one `random.Random(seed)` and cut in order: round(n * test) to test, round(n * validation) to validation (halves
    round up), the rest to train. Each split keeps the dataset's order.

    So the same seed gives the same split, the splits are disjoint and cover the dataset, and each group's count of
    units in each split is within one of its requested share. Without `group_by`, pairs expanded from one source
    record (rpr, helpsteer2, dsp, personal-llm) can land in different splits.
    """
    if not (validation >= 0 and test >= 0 and validation + test < 1):  # also refuses NaN
        raise InputError(f"validation ({validation}) and test ({test}) must be >= 0 and sum to less than 1.")
    values = dataset[stratify] if stratify in dataset.column_names else [None] * len(dataset)
    strata = defaultdict(list)
    for unit in _split_units(dataset, group_by):
        strata[values[unit[0]]].append(unit)
    rng = random.Random(seed)
    splits = {"train": [], "validation": [], "test": []}
    for value in sorted(strata, key=lambda v: (v is not None, str(v))):
        units = strata[value]
        rng.shuffle(units)
        num_test, num_validation = int(len(units) * test + 0.5), int(len(units) * validation + 0.5)
        for name, chosen in (("test", units[:num_test]), ("validation", units[num_test:num_test + num_validation]),
                             ("train", units[num_test + num_validation:])):
            splits[name] += [index for unit in chosen for index in unit]
    return DatasetDict({name: dataset.select(sorted(indices)) for name, indices in splits.items()})


def _split_units(dataset: Dataset, group_by: str | None) -> list:
    """Lists of pair indices that must share a split, in order of first appearance."""
    if group_by is None:
        return [[index] for index in range(len(dataset))]
    if group_by not in dataset.column_names:
        raise InputError(f"group_by: no column {group_by!r}; columns are {dataset.column_names}.")
    units = defaultdict(list)
    for index, value in enumerate(dataset[group_by]):
        units[json.dumps(value, sort_keys=True)].append(index)
    return list(units.values())
