"""The pair schema every format adapter writes, and the field readers and pair builders they share.

A pair has the seven columns of `PAIR_FEATURES`:

- `prompt`: the conversation before the compared assistant turn, as chat messages `{"role", "content"}`;
- `chosen`, `rejected`: the preferred and the dispreferred assistant turn;
- `category`: the latent domain of the pair (read by the metrics, never a training input);
- `attribute`, `criterion`: the wanted attribute and a sentence stating it, for attribute-conditioned data;
- `user`: the simulated user whose preference labels the pair.

Columns a format has no value for hold None, so pairs from different formats concatenate. A record that does not fit
its format's schema (a missing column, a field of the wrong type, a chat role other than system/user/assistant) is an
`InputError` naming the record index and the field; a candidate pair the format's recipe drops is a `Skip`.
"""

import math
import re
from typing import NamedTuple

from datasets import Features, List, Value

from ..errors import InputError

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

ROLES = ("system", "user", "assistant")
SPEAKER_ROLES = {"human": "user", "assistant": "assistant"}  # the speakers of plain-text dialogue encodings


class Skip(NamedTuple):
    """A candidate pair a format's recipe drops; `reason` names what was dropped, in the plural, and `fix` (if any)
    says what the user can change, shown when a source leaves no pair at all."""

    reason: str
    fix: str = ""


# Field readers: a record that does not fit its schema is an error naming the record and the field.


def read_text(value, index: int, field: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"record {index}: field {field!r} must be text, got {type(value).__name__}.")
    return value


def read_optional_text(value, index: int, field: str) -> str | None:
    """Text, or None when it is missing: null, or NaN as pandas writes a text column without values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return read_text(value, index, field)


def read_score(value, index: int, field: str) -> float | None:
    """A number, or None when it is missing (null, or NaN as parquet and pandas write a missing float): a missing
    number is never compared (NaN compares False to everything, which would silently reverse a label)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"record {index}: field {field!r} must be a number, got {type(value).__name__}.")
    return None if math.isnan(value) else value


def read_messages(value, index: int, field: str) -> list:
    if not isinstance(value, list) or not value:
        raise InputError(f"record {index}: field {field!r} must be a non-empty list of chat messages, got "
                         f"{type(value).__name__}.")
    messages = []
    for position, message in enumerate(value):
        if not isinstance(message, dict):
            raise InputError(f"record {index}: field '{field}[{position}]' must be a message "
                             f"{{'role', 'content'}}, got {type(message).__name__}.")
        message = {key: read_text(message.get(key), index, f"{field}[{position}].{key}") for key in ("role", "content")}
        if message["role"] not in ROLES:
            raise InputError(f"record {index}: field '{field}[{position}].role' must be one of {', '.join(ROLES)}, "
                             f"got {message['role']!r}.")
        messages.append(message)
    return messages


def read_prompt(value, index: int, field: str = "prompt") -> list:
    """An explicit prompt: chat messages that do not end with an assistant turn (the compared turn comes next)."""
    prompt = read_messages(value, index, field)
    if prompt[-1]["role"] == "assistant":
        raise InputError(f"record {index}: field '{field}[{len(prompt) - 1}].role' is 'assistant', but a prompt must "
                         f"not end with an assistant turn (the compared responses are the next assistant turn); "
                         f"end it with the user turn they answer.")
    return prompt


def read_metadata(record: dict, index: int, columns: list) -> dict:
    """The pair metadata columns (`PAIR_METADATA`) among `columns`, as optional text."""
    return {name: read_optional_text(record[name], index, name) for name in columns}


def parse_transcript(text: str, turn: re.Pattern, index: int, field: str) -> list:
    """Splits a plain-text dialogue into chat messages at its turn markers (`turn` captures the speaker's name),
    keeping every turn's text verbatim."""
    parts = turn.split(text)
    if parts[0] or len(parts) == 1:
        raise InputError(f"record {index}: field {field!r} does not open with a turn marker ({turn.pattern!r}).")
    return [{"role": SPEAKER_ROLES[speaker.lower()], "content": content}
            for speaker, content in zip(parts[1::2], parts[2::2])]


# Pair builders.


def user_turn(text: str) -> list:
    return [{"role": "user", "content": text}]


def make_pair(prompt: list, chosen: str, rejected: str, **metadata) -> dict:
    """A pair in the schema, its metadata columns None unless given."""
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "category": None, "attribute": None,
            "criterion": None, "user": None, **metadata}


def with_criterion(prompt: list, criterion: str) -> list:
    """The prompt with `criterion` appended to its last message (`CRITERION_TEMPLATE`)."""
    *history, last = prompt
    return [*history, {"role": last["role"],
                       "content": CRITERION_TEMPLATE.format(prompt=last["content"], criterion=criterion)}]


def attribute_pair(prompt, chosen, rejected, attribute, criterion, append_criterion: bool) -> dict:
    """A pair labelled under one attribute. The attribute is also the pair's category: it is the latent structure
    of attribute-conditioned data (what the router should recover without seeing the criterion)."""
    if append_criterion:
        prompt = with_criterion(prompt, criterion)
    return make_pair(prompt, chosen, rejected, category=attribute, attribute=attribute, criterion=criterion)


def shared_prompt_pair(chosen: list, rejected: list, **metadata) -> dict | Skip:
    """The pair two full conversations compare: their shared turns, then each one's final assistant turn. The shared
    turns must end with a user turn (the one both final turns answer); other pairs are dropped (counted)."""
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return Skip("pairs whose transcripts do not end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        return Skip("pairs whose transcripts differ before the last assistant turn")
    if len(chosen) > 1 and chosen[-2]["role"] != "user":
        return Skip("pairs whose shared turns do not end with a user turn")
    return make_pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], **metadata)


def unusable(pair: dict) -> str | None:
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
