"""WebGPT comparisons: two scored transcripts of the same question."""

import re
from collections.abc import Iterator

from datasets import Dataset

from ...errors import InputError
from ..schema import Skip, parse_transcript, read_score, read_text, shared_prompt_pair

COLUMNS = ("text", "score")
TURN = re.compile(r"(?:^|\n+)## (Human|Assistant):\n")  # a turn marker, capturing the speaker


def pairs(dataset: Dataset) -> Iterator[dict | Skip]:
    """Records `{"text": [a, b], "score": [sa, sb]}` as released, each text a transcript
    `## Human:\\n...\\n\\n## Assistant:\\n...`; the higher score is preferred and equal scores (ties) are dropped
    (counted), as are pairs with a missing (null or NaN) score. Turn texts are kept as written, without the blank
    lines around the markers."""
    for index, record in enumerate(dataset):
        texts, scores = record["text"], record["score"]
        if not isinstance(texts, list) or len(texts) != 2:
            raise InputError(f"record {index}: field 'text' must hold two transcripts.")
        if not isinstance(scores, list) or len(scores) != 2:
            raise InputError(f"record {index}: field 'score' must hold two scores.")
        first, second = (read_score(score, index, f"score[{side}]") for side, score in enumerate(scores))
        if first is None or second is None:
            yield Skip("pairs with a missing (null or NaN) score")
            continue
        if first == second:
            yield Skip("ties (equal scores)")
            continue
        turns = [parse_transcript(read_text(text, index, f"text[{side}]"), TURN, index, f"text[{side}]")
                 for side, text in enumerate(texts)]
        yield shared_prompt_pair(*(turns if first > second else turns[::-1]))
