"""TRL's preference type (https://huggingface.co/docs/trl/dataset_formats), standard or conversational, with an
explicit `prompt` column or an implicit prompt shared by `chosen` and `rejected`."""

from collections.abc import Iterator

from datasets import Dataset

from ...errors import InputError
from ..schema import (PAIR_METADATA, Skip, make_pair, read_messages, read_metadata, read_prompt, read_text,
                      shared_prompt_pair, user_turn)

COLUMNS = ("chosen", "rejected")
# An implicit standard prompt (the characters `chosen` and `rejected` share) shorter than this is a coincidence.
IMPLICIT_PROMPT_MIN_CHARACTERS = 4


def pairs(dataset: Dataset, *, conversational: bool | None = None) -> Iterator[dict | Skip]:
    """TRL's preference type, standard or conversational, explicit or implicit prompt.

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
            pair.update(read_metadata(record, index, metadata))
        yield pair


def _conversational_pair(record: dict, index: int, explicit: bool) -> dict | Skip:
    chosen = read_messages(record["chosen"], index, "chosen")
    rejected = read_messages(record["rejected"], index, "rejected")
    if not explicit:
        return shared_prompt_pair(chosen, rejected)
    prompt = read_prompt(record["prompt"], index)
    if len(chosen) != 1 or len(rejected) != 1 or {chosen[0]["role"], rejected[0]["role"]} != {"assistant"}:
        return Skip("pairs whose completions are not one assistant message each")
    return make_pair(prompt, chosen[0]["content"], rejected[0]["content"])


def _standard_pair(record: dict, index: int, explicit: bool) -> dict | Skip:
    chosen = read_text(record["chosen"], index, "chosen")
    rejected = read_text(record["rejected"], index, "rejected")
    if explicit:
        return make_pair(user_turn(read_text(record["prompt"], index, "prompt")), chosen, rejected)
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
    return make_pair(user_turn(prompt), *completions)


def _common_prefix_length(first, second) -> int:
    return next((n for n, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))


def _is_implicit_prompt(prompt: str, completions: tuple) -> bool:
    """Whether the text two responses share looks like a prompt (see `pairs`)."""
    if len("".join(prompt.split())) < IMPLICIT_PROMPT_MIN_CHARACTERS:
        return False
    inside_word = prompt[-1].isalnum() and any(completion[:1].isalnum() for completion in completions)
    return not inside_word
