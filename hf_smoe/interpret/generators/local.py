"""A `TextGenerator` over any transformers causal LM (a Hub id or a folder), greedy and batched, on CPU or CUDA.

The judge reads P(YES) from the next-token distribution in one forward pass, and judge prompts that share a beginning
(one description against many examples) run that beginning once per batch.
"""

import inspect
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ...errors import InputError
from ...features import weights_digest
from ...runtime import check_model_source, fast_dtype, model_load_errors, pick_device
from ...runtime.outputs import is_reward_model
from .base import ANSWER_FORMS, SAMPLING, Judgment, TextGenerator, yes_probability


def as_chat(tokenizer, prompt: str) -> str:
    """`prompt` as one user message rendered by the tokenizer's chat template, ready for the assistant's answer;
    the prompt itself for a tokenizer without a template (a base LM continues the text)."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)


def first_sentence(error: Exception) -> str:
    """The first sentence of an error's message (transformers lists every model class after it)."""
    return str(error).split(". ")[0].strip()


class LocalGenerator(TextGenerator):
    """Any transformers causal LM (a Hub id or a folder), greedy (or sampled with a seed) and batched, on CPU or CUDA.

    The judge reads the next-token distribution after the prompt in one forward pass (no sampling): P(YES) and P(NO)
    pool the single-token forms of each answer in `ANSWER_FORMS`. Judge prompts that share a beginning (one
    description against many examples) run that beginning once per batch and reuse its key/value cache.

    Args:
        name_or_path: the causal LM (it needs its LM head: a base `AutoModel` folder cannot generate).
        device: default CUDA when available, else CPU.
        dtype: the weights' dtype (default: `fast_dtype(device)`).
        batch_size: prompts per forward pass.
        field: the flag that named the model (`generator` or `judge`), which every error names.
    """

    def __init__(self, name_or_path, *, device=None, dtype=None, batch_size: int = 8, field: str = "generator"):
        self.device = torch.device(device) if device else pick_device()
        self.dtype = dtype or fast_dtype(self.device)
        self.batch_size = batch_size
        source = check_model_source(field, name_or_path)
        fix = "give a folder or Hub id of a model with an LM head"
        if is_reward_model(Path(source)):
            raise InputError(f"{field}: {name_or_path} is an hf_smoe reward model, which scores text but cannot "
                             f"write it; {fix}.")
        with model_load_errors(field, name_or_path):
            try:
                self.model, info = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype,
                                                                        output_loading_info=True)
            except ValueError as error:  # e.g. a T5 folder: transformers names no causal-LM class for it
                raise InputError(f"{field}: {name_or_path} is not a causal language model "
                                 f"({first_sentence(error)}); {fix}.") from None
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        if info["missing_keys"]:  # a base-model folder loads with a freshly initialised (random) LM head
            raise InputError(f"{field}: {name_or_path} is not a causal language model: its weights lack "
                             f"{sorted(info['missing_keys'])[:3]}; {fix} (the `smoe train` backbone folder is a base "
                             "model).")
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
            raise InputError(f"{field}: the tokenizer of {name_or_path} has no single token for YES or NO, so the "
                             "judge cannot read its answer from the next-token distribution.")
        self.identity = f"local:{name_or_path}|weights={weights_digest(self.model)}|{self.dtype}|greedy"
        # transformers renamed `past_key_values` to `cache` during 5.x; take whichever this version's model has
        self.cache_argument = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, seed: int | None = None) -> list[str]:
        self.tokenizer.padding_side = "left"
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        texts = [None] * len(prompts)
        decoding = {"do_sample": False} if seed is None else {"do_sample": True, **SAMPLING}
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            inputs = self.tokenizer([as_chat(self.tokenizer, prompts[i]) for i in rows], return_tensors="pt",
                                    padding=True, add_special_tokens=self.plain).to(self.device)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [],
                                       enabled=seed is not None):  # seeded samples leave the caller's RNG as it was
                if seed is not None:
                    torch.manual_seed(seed + start)
                output = self.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                             pad_token_id=self.tokenizer.pad_token_id, **decoding)
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
