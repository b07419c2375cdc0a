"""Anthropic HH-RLHF: pairs of plain-text transcripts that differ in their last assistant turn."""

import re
from collections.abc import Iterator

from datasets import Dataset

from ..schema import Skip, parse_transcript, read_text, shared_prompt_pair

COLUMNS = ("chosen", "rejected")
TURN = re.compile(r"\n\n(Human|Assistant): ")  # a turn marker, capturing the speaker


def pairs(dataset: Dataset) -> Iterator[dict | Skip]:
    """Two transcripts `\\n\\nHuman: ...\\n\\nAssistant: ...` that share every turn but the last assistant turn.

    Turns are split at the `\\n\\nHuman: ` / `\\n\\nAssistant: ` markers and kept verbatim; pairs whose transcripts
    differ before the last assistant turn are dropped (counted). Unlike TRL's HH script, which cuts at the longest
    common character prefix, this never splices a half-shared turn into the prompt. HH files carry no subset label:
    give it with `load_pairs(..., category="helpful")` (or "harmless"). Copies that lost the leading blank line
    (stripped) or use Windows line ends are read the same way."""
    for index, record in enumerate(dataset):
        chosen, rejected = (parse_transcript(_released_text(read_text(record[side], index, side)), TURN, index, side)
                            for side in ("chosen", "rejected"))
        yield shared_prompt_pair(chosen, rejected)


def recognizes(record: dict) -> bool:
    """Whether a record with TRL's columns holds HH transcripts."""
    return isinstance(record["chosen"], str) and _released_text(record["chosen"]).startswith("\n\nHuman: ")


def _released_text(text: str) -> str:
    """An HH transcript in its released form: `\\n` line ends, opening with `\\n\\nHuman: `."""
    text = text.replace("\r\n", "\n")
    return text if text.startswith("\n\n") else "\n\n" + text.lstrip("\n")
