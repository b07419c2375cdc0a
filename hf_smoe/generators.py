"""Text generators for reading experts: one small interface, a local transformers model behind it, and a disk cache.

The interpretation pipeline (`hf_smoe.interpret`) needs two things from a language model: write a text for a prompt
(the describer, Fig. 4) and answer YES or NO with a probability (the judge, Fig. 5). `TextGenerator` is exactly
that; `LocalGenerator` runs any transformers causal LM (greedy, batched, CPU or CUDA), `hf_smoe.endpoint`'s
`EndpointGenerator` any OpenAI-compatible server. `CachedGenerator` stores every answer on disk, keyed by
(generator identity, task, exact prompt), so a rerun or an interrupted run repeats no finished call.
"""

import hashlib
import inspect
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from .features import weights_digest
from .loading import cache_root, check_model_source, default_generator_path, fast_dtype, loading, pick_device
from .modeling.configuration_smoe import InputError

# Surface forms of the two answers whose next-token probabilities are pooled: small models often write "Yes" or
# " YES" instead of the exact token the prompt asks for, and those mean the same thing.
ANSWER_FORMS = {"YES": ("YES", "Yes", "yes", " YES", " Yes", " yes"), "NO": ("NO", "No", "no", " NO", " No", " no")}


@dataclass(frozen=True)
class Judgment:
    """One YES/NO answer of a judge.

    Args:
        answer: the binary judgment z (True = YES).
        probability: P(YES) / (P(YES) + P(NO)) from the judge's next-token distribution, or None when it is not
            known (an endpoint that returns no log-probabilities).
        raw: what the judge said (the text an endpoint returned, or the more probable answer of a local model).
    """

    answer: bool
    probability: float | None
    raw: str


class TextGenerator(ABC):
    """What the describer and the judge need from a language model. `identity` names the model and its decoding
    settings: two generators with the same identity give the same answers, so the cache may share them."""

    identity: str

    @abstractmethod
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        """The model's greedy answer to each prompt (sent as one user message), without the prompt."""

    @abstractmethod
    def judge(self, prompts: Sequence[str]) -> list[Judgment]:
        """The model's YES/NO answer to each prompt (sent as one user message), with its probability."""


def yes_probability(log_probs: dict) -> float | None:
    """P(YES) / (P(YES) + P(NO)) from a map of answer text -> log-probability (the forms in `ANSWER_FORMS`); None
    when neither answer appears."""
    mass = {answer: sum(math.exp(log_probs[form]) for form in forms if form in log_probs)
            for answer, forms in ANSWER_FORMS.items()}
    total = mass["YES"] + mass["NO"]
    return mass["YES"] / total if total > 0 else None


def parse_yes_no(text: str) -> bool:
    """The answer a judge wrote: YES when its first word is yes (any case, punctuation ignored), else NO — a judge
    that answers neither has not said the example clearly matches (Fig. 5's decision rule)."""
    words = text.strip().split()
    return bool(words) and words[0].strip(".,:;!\"'*()[]").upper() == "YES"


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

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        return self._answer("generate", prompts, {"max_new_tokens": max_new_tokens},
                            lambda chunk: self.generator.generate(chunk, max_new_tokens=max_new_tokens),
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


def as_chat(tokenizer, prompt: str) -> str:
    """`prompt` as one user message rendered by the tokenizer's chat template, ready for the assistant's answer;
    the prompt itself for a tokenizer without a template (a base LM continues the text)."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)


class LocalGenerator(TextGenerator):
    """Any transformers causal LM (a Hub id or a folder), greedy and batched, on CPU or CUDA.

    The judge reads the next-token distribution after the prompt in one forward pass (no sampling): P(YES) and P(NO)
    pool the single-token forms of each answer in `ANSWER_FORMS`. Judge prompts that share a beginning (one
    description against many examples) run that beginning once per batch and reuse its key/value cache.

    Args:
        name_or_path: the causal LM (it needs its LM head: a base `AutoModel` folder cannot generate).
        device: default CUDA when available, else CPU.
        dtype: the weights' dtype (default: `fast_dtype(device)`).
        batch_size: prompts per forward pass.
    """

    def __init__(self, name_or_path, *, device=None, dtype=None, batch_size: int = 8):
        self.device = torch.device(device) if device else pick_device()
        self.dtype = dtype or fast_dtype(self.device)
        self.batch_size = batch_size
        source = check_model_source("generator", name_or_path)
        with loading("generator", name_or_path):
            try:
                self.model, info = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype,
                                                                        output_loading_info=True)
            except ValueError as error:  # e.g. a BERT folder: transformers names no causal-LM class for it
                raise InputError(f"generator: {name_or_path} is not a causal language model ({error}); give a "
                                 "folder or Hub id of a model with an LM head.") from None
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        if info["missing_keys"]:  # a base-model folder loads with a freshly initialised (random) LM head
            raise InputError(f"generator: {name_or_path} is not a causal language model: its weights lack "
                             f"{sorted(info['missing_keys'])[:3]}; give a folder or Hub id of a model with an LM "
                             "head (the `smoe train` backbone folder is a base model).")
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # a chat template writes its own special tokens; plain text (a base LM) gets the tokenizer's (e.g. BOS)
        self.plain = not getattr(self.tokenizer, "chat_template", None)
        self.answer_tokens = {}  # token id -> the first answer form that is exactly that one token
        for form in (form for forms in ANSWER_FORMS.values() for form in forms):
            ids = self.tokenizer.encode(form, add_special_tokens=False)
            if len(ids) == 1:
                self.answer_tokens.setdefault(ids[0], form)
        forms = set(self.answer_tokens.values())
        if forms.isdisjoint(ANSWER_FORMS["YES"]) or forms.isdisjoint(ANSWER_FORMS["NO"]):
            raise InputError(f"generator: the tokenizer of {name_or_path} has no single token for YES or NO, so the "
                             "judge cannot read its answer from the next-token distribution.")
        self.identity = f"local:{name_or_path}|weights={weights_digest(self.model)}|{self.dtype}|greedy"
        # transformers renamed `past_key_values` to `cache` during 5.x; take whichever this version's model has
        self.cache_argument = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        self.tokenizer.padding_side = "left"
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        texts = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            inputs = self.tokenizer([as_chat(self.tokenizer, prompts[i]) for i in rows], return_tensors="pt",
                                    padding=True, add_special_tokens=self.plain).to(self.device)
            output = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                         pad_token_id=self.tokenizer.pad_token_id)
            answers = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for row, answer in zip(rows, answers):
                texts[row] = answer
        return texts

    @torch.inference_mode()
    def judge(self, prompts: Sequence[str]) -> list[Judgment]:
        judgments = []
        for start in range(0, len(prompts), self.batch_size):
            ids = [self.tokenizer(as_chat(self.tokenizer, prompt), add_special_tokens=self.plain)["input_ids"]
                   for prompt in prompts[start:start + self.batch_size]]
            log_probs = self.next_token_log_probs(ids)
            for row in log_probs:
                probability = yes_probability({form: row[token].item() for token, form in self.answer_tokens.items()})
                answer = probability > 0.5
                judgments.append(Judgment(answer, probability, "YES" if answer else "NO"))
        return judgments

    def next_token_log_probs(self, ids: list) -> torch.Tensor:
        """(B, vocab) log-probabilities of the token after each sequence of `ids`; their common beginning (all but
        each sequence's last token at most) runs once and its cache is shared by the batch. The rest is left-padded
        with explicit positions, so every sequence ends at the last column and only that column's logits are made."""
        shared = 0
        shortest = min(len(sequence) for sequence in ids) - 1
        while shared < shortest and len({sequence[shared] for sequence in ids}) == 1:
            shared += 1
        cache = {}
        if shared:
            prefix = torch.tensor([ids[0][:shared]], device=self.device)
            past = self.model(input_ids=prefix, use_cache=True)[self.cache_argument]
            past.batch_repeat_interleave(len(ids))
            cache = {self.cache_argument: past, "use_cache": True}
        width = max(len(sequence) for sequence in ids) - shared
        suffix = torch.full((len(ids), width), self.tokenizer.pad_token_id, device=self.device)
        mask = torch.zeros((len(ids), shared + width), dtype=torch.long, device=self.device)
        mask[:, :shared] = 1
        for row, sequence in enumerate(ids):
            rest = sequence[shared:]
            suffix[row, width - len(rest):] = torch.tensor(rest, device=self.device)
            mask[row, shared + width - len(rest):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)[:, shared:]
        logits = self.model(input_ids=suffix, attention_mask=mask, position_ids=positions, logits_to_keep=1,
                            **cache).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1)


def load_generator(spec: str = "local", *, model: str | None = None, cache_dir=None, device=None,
                   show_progress: bool = True) -> CachedGenerator:
    """A cached generator from a command-line spec: `local` (the embedded SmolLM2-135M-Instruct as a causal LM), a
    folder or Hub id of any causal LM, or the URL of an OpenAI-compatible server (`model`: the model name it
    should use)."""
    if spec.startswith(("http://", "https://")):
        from .endpoint import EndpointGenerator  # it imports this module

        generator = EndpointGenerator(spec, model=model)
    else:
        generator = LocalGenerator(str(default_generator_path()) if spec in ("local", "default") else spec,
                                   device=device)
    return CachedGenerator(generator, cache_dir=cache_dir, show_progress=show_progress)


def load_describer_and_judge(generator: str = "local", generator_model: str | None = None, judge: str | None = None,
                             judge_model: str | None = None, cache_dir=None) -> tuple:
    """The cached describer and judge of a command line; the judge defaults to the describer itself (one model
    loaded once)."""
    describer = load_generator(generator, model=generator_model, cache_dir=cache_dir)
    if (judge or generator) == generator and (judge_model or generator_model) == generator_model:
        return describer, describer
    return describer, load_generator(judge, model=judge_model or generator_model, cache_dir=cache_dir)
