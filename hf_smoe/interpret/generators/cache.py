"""A disk cache in front of any `TextGenerator`: every answer is stored, keyed by (generator identity, task, exact
prompt), so a rerun or an interrupted run repeats no finished call."""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ...runtime import cache_root
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
        self.path = Path(cache_dir or cache_root() / "generations") / f"{name}.jsonl"
        self._answers = self._read()

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, seed: int | None = None) -> list[str]:
        settings = {"max_new_tokens": max_new_tokens} | ({} if seed is None else {"seed": seed})
        return self._answer("generate", prompts, settings,
                            lambda chunk: self.generator.generate(chunk, max_new_tokens=max_new_tokens, seed=seed),
                            lambda text: text, lambda text: text)

    def judge(self, prompts: Sequence[str]) -> list[Judgment]:
        return self._answer("judge", prompts, {}, self.generator.judge, asdict, lambda stored: Judgment(**stored))

    def _answer(self, task: str, prompts, settings: dict, call, encode, decode) -> list:
        keys = [self._key(task, prompt, settings) for prompt in prompts]
        missing = list(dict.fromkeys(key for key in keys if key not in self._answers))
        if missing:
            prompt_of = dict(zip(keys, prompts))
            progress = tqdm(total=len(missing), desc=f"{task} ({self.identity[:40]})", unit="prompt",
                            disable=not self.show_progress)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as stored:
                if self._ends_mid_line:  # a line cut short by an interruption: start the next one cleanly
                    stored.write("\n")
                    self._ends_mid_line = False
                for start in range(0, len(missing), self.chunk_size):
                    chunk = missing[start:start + self.chunk_size]
                    for key, answer in zip(chunk, call([prompt_of[key] for key in chunk])):
                        self._answers[key] = encode(answer)
                        stored.write(json.dumps({"key": key, "answer": self._answers[key]}) + "\n")
                    stored.flush()
                    progress.update(len(chunk))
            progress.close()
        return [decode(self._answers[key]) for key in keys]

    def _key(self, task: str, prompt: str, settings: dict) -> str:
        payload = json.dumps([self.identity, task, settings, prompt], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _read(self) -> dict:
        """The stored answers; a line cut short by an interruption is skipped (its call is simply made again)."""
        answers, text = {}, self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        self._ends_mid_line = bool(text) and not text.endswith("\n")
        if text:
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                answers[record["key"]] = record["answer"]
        return answers
