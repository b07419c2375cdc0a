"""A disk cache in front of any `TextGenerator`: every answer is stored, keyed by (generator identity, task, exact
prompt), so a rerun or an interrupted run repeats no finished call. A damaged line (cut short by an interruption,
bytes that are not text, JSON that is not an answer of its task) is never used: it is dropped, said, and asked
again."""

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ...errors import InputError
from ...runtime import cache_root, write_text_atomic
from .base import Judgment, TextGenerator


class CachedGenerator(TextGenerator):
    """A generator whose every answer is stored in `cache_dir/<identity hash>.jsonl` (one JSON line per answer,
    appended and flushed after each chunk), so a rerun costs nothing and an interrupted run loses at most one chunk.

    Args:
        generator: the generator that answers on a cache miss.
        cache_dir: folder of the answer files (default: `$HF_SMOE_CACHE/generations`).
        chunk_size: prompts sent to `generator` at a time (each chunk is one write).
        show_progress: a progress bar over the prompts that miss the cache.
    """

    def __init__(self, generator: TextGenerator, cache_dir=None, chunk_size: int = 32, show_progress: bool = True):
        self.generator, self.identity = generator, generator.identity
        self.chunk_size, self.show_progress = chunk_size, show_progress
        name = hashlib.sha256(self.identity.encode()).hexdigest()[:16]
        self.path = Path(cache_dir or cache_root() / "generations").expanduser() / f"{name}.jsonl"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InputError(f"generation_cache: {self.path.parent} is, or is inside, a file; give a folder for the "
                             "cached answers.") from None
        self._answers = self._read()

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, seed: int | None = None) -> list[str]:
        settings = {"max_new_tokens": max_new_tokens} | ({} if seed is None else {"seed": seed})
        return self._answer("generate", prompts, settings,
                            lambda chunk: self.generator.generate(chunk, max_new_tokens=max_new_tokens, seed=seed),
                            lambda text: text, lambda text: text, is_text)

    def judge(self, prompts: Sequence[str]) -> list[Judgment]:
        return self._answer("judge", prompts, {}, self.generator.judge, asdict, lambda stored: Judgment(**stored),
                            is_judgment)

    def _answer(self, task: str, prompts, settings: dict, call, encode, decode, valid) -> list:
        """The answers to `prompts`, from the cache where a stored answer is `valid` for `task`, else from `call`
        (stored as they come)."""
        keys = [self._key(task, prompt, settings) for prompt in prompts]
        missing = list(dict.fromkeys(key for key in keys if not valid(self._answers.get(key))))
        misfits = sum(key in self._answers for key in missing)
        if misfits:
            warnings.warn(f"generation_cache: {misfits} stored answer(s) in {self.path} are not answers of a {task} "
                          "call; they are asked again and replaced.", stacklevel=3)
        if missing:
            prompt_of = dict(zip(keys, prompts))
            # closed on a failure too, so that an error message starts on a line of its own
            with tqdm(total=len(missing), desc=f"{task} ({self.identity[:40]})", unit="prompt",
                      disable=not self.show_progress) as progress, self.path.open("a", encoding="utf-8") as stored:
                for start in range(0, len(missing), self.chunk_size):
                    chunk = missing[start:start + self.chunk_size]
                    for key, answer in zip(chunk, call([prompt_of[key] for key in chunk])):
                        self._answers[key] = encode(answer)
                        stored.write(json.dumps({"key": key, "answer": self._answers[key]}) + "\n")
                    stored.flush()
                    progress.update(len(chunk))
            if misfits:  # their new answers are stored; the misfits go
                self._rewrite()
        return [decode(self._answers[key]) for key in keys]

    def _key(self, task: str, prompt: str, settings: dict) -> str:
        payload = json.dumps([self.identity, task, settings, prompt], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _read(self) -> dict:
        """The stored answers. Lines that are not an answer record (cut short by an interruption, not UTF-8, not
        JSON, or JSON of another shape) are dropped: the file is rewritten without them, with one warning that
        counts them, and their calls are made again."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        answers, damaged = {}, 0
        for line in data.splitlines():
            record = answer_record(line)
            if record is None:
                damaged += bool(line.strip())
            else:
                answers[record[0]] = record[1]
        self._answers = answers
        if damaged or not data.endswith(b"\n"):  # the next answer must start on a line of its own
            self._rewrite()
        if damaged:
            warnings.warn(f"generation_cache: {damaged} damaged line(s) of {self.path} dropped (cut short, not text, "
                          "or not an answer); their answers are asked again.", stacklevel=3)
        return answers

    def _rewrite(self) -> None:
        """The answer file holding exactly the answers in memory, one record a line (written atomically)."""
        write_text_atomic(self.path, "".join(json.dumps({"key": key, "answer": answer}) + "\n"
                                             for key, answer in self._answers.items()))


def answer_record(line: bytes) -> tuple | None:
    """(key, answer) of one stored line, or None when it is not a record {"key": str, "answer": text or judgment}."""
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return None
    answer = record.get("answer")
    return (record["key"], answer) if is_text(answer) or is_judgment(answer) else None


def is_text(answer) -> bool:
    """A stored answer of `generate`."""
    return isinstance(answer, str)


def is_judgment(answer) -> bool:
    """A stored answer of `judge`: a `Judgment` as a dict, its probability None or in [0, 1]."""
    if not isinstance(answer, dict) or set(answer) != {"answer", "probability", "raw"}:
        return False
    probability = answer["probability"]
    return (isinstance(answer["answer"], bool) and isinstance(answer["raw"], str)
            and (probability is None or (isinstance(probability, (int, float)) and not isinstance(probability, bool)
                                         and math.isfinite(probability) and 0.0 <= probability <= 1.0)))
