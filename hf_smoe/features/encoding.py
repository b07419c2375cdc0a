"""Turning (prompt, response) into model inputs: the chat-template rendering the model's prompt boundary relies on,
and the encoding a checkpoint records so that it is scored on the features it was trained on."""

import os
import warnings

import torch

from ..modeling.modeling_smoe import assistant_turn_pattern, chat_template_for, render_ids
from ..errors import InputError
from ..runtime import fast_dtype, pick_device
from ..runtime.devices import DTYPE_VARIABLE, DTYPES, dtype_name

DEFAULT_MAX_LENGTH = 1024  # for a model that records no encoding
TRUNCATION = "prompt_oldest_first"  # `encode_pair`'s rule, recorded so a checkpoint names the rule it was cut by


def training_encoding(max_length: int | None, dtype: torch.dtype | None = None) -> dict:
    """What a checkpoint records of its training features' encoding (`SMoERewardConfig.encoding`); `dtype` defaults
    to the one the embedding cache computes in on this process's device."""
    return {"max_length": max_length, "truncation": TRUNCATION, "dtype": dtype_name(dtype or fast_dtype(pick_device()))}


def scoring_encoding(config, max_length: int | None = None) -> dict:
    """`{"max_length", "dtype"}` to score a model with: what its checkpoint recorded at training, so that it reads the
    features it learned from. A `max_length` given that differs from the recorded one, or a `$HF_SMOE_DTYPE` that
    differs from the recorded dtype, wins with one warning saying so; a model that records nothing gets the
    defaults (1024 tokens, the hardware's fast dtype)."""
    recorded = getattr(config, "encoding", None) or {}
    length = recorded.get("max_length", DEFAULT_MAX_LENGTH) if max_length is None else max_length
    if "max_length" in recorded and length != recorded["max_length"]:
        warnings.warn(f"max_length {length} overrides the {recorded['max_length']} tokens the checkpoint was "
                      "trained with: it is scored on other features than it learned from.", stacklevel=2)
    dtype = fast_dtype(pick_device())
    if recorded.get("dtype") in DTYPES:
        if os.environ.get(DTYPE_VARIABLE) and dtype_name(dtype) != recorded["dtype"]:
            warnings.warn(f"{DTYPE_VARIABLE}={os.environ[DTYPE_VARIABLE]} overrides the {recorded['dtype']} the "
                          "checkpoint's features were computed in.", stacklevel=2)
        else:
            dtype = DTYPES[recorded["dtype"]]
    return {"max_length": length, "dtype": dtype}


def as_messages(prompt) -> list:
    """A prompt given as text becomes one user message; chat messages pass through."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def unicode_problem(text: str) -> str | None:
    """What keeps `text` from being Unicode text, in words (None if nothing): JSON can escape half of a UTF-16
    surrogate pair (`"\\ud800"`), which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return (f"not Unicode text: an unpaired surrogate {text[error.start]!r} at character {error.start}; give UTF-8 "
                "text (each surrogate pair as one character)")
    return None


def encode_pair(tokenizer, prompt, response: str, max_length: int | None = None, allow_empty: bool = False) -> dict:
    """Encodes chat-template(prompt) + response.

    Uses the tokenizer's chat template, or, for tokenizers without one, the plain HH-style fallback
    `"Human: ...\\n\\nAssistant: ..."` wrapped in the tokenizer's own start/end tokens (`PLAIN_CHAT_TEMPLATE`).

    Truncation to `max_length` never cuts the response's final token nor the template's end-of-turn tokens after
    it (that is where the reward is read): the prompt loses its oldest tokens first, down to half the budget (its
    leading special token, e.g. BOS, is kept); then the response loses tokens from its middle. A short response after
    a long prompt is kept whole. Only a `max_length` too small for the least that must survive (that leading token,
    the assistant-turn opener, the response's final token and the end-of-turn tokens) raises `InputError`.

    An empty response is an error in preference data; a policy's empty completion (`allow_empty=True`, online RL)
    is scored on the template's empty assistant turn. An empty prompt (its last message whitespace) is always an
    error: the router reads it.

    Returns:
        dict with `input_ids`, `attention_mask` (lists) and `prompt_lengths` (int: tokens up to and including the
        assistant-turn opener).
    """
    messages = as_messages(prompt)
    if not messages or not str(messages[-1].get("content") or "").strip():
        raise InputError("prompt: empty text (nothing but whitespace in its last message); the router reads the "
                         "prompt, give one.")
    if not response and not allow_empty:
        raise InputError("response: empty text; every pair needs two non-empty responses.")
    for field, text in [*((f"prompt[{i}].content", m.get("content")) for i, m in enumerate(messages)),
                        ("response", response)]:
        problem = unicode_problem(text) if isinstance(text, str) else None
        if problem:
            raise InputError(f"{field}: {problem}.")
    prompt_ids = render_ids(tokenizer, messages, add_generation_prompt=True)
    full_ids = render_ids(tokenizer, messages + [{"role": "assistant", "content": response}],
                          add_generation_prompt=False)
    if full_ids[:len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise InputError("tokenizer: its chat template does not render the prompt as a prefix of prompt + response, "
                         "so the prompt boundary is undefined; use a template whose generation prompt is a prefix.")
    if max_length is not None and len(full_ids) > max_length:
        empty_turn = render_ids(tokenizer, messages + [{"role": "assistant", "content": ""}],
                                add_generation_prompt=False)
        return _truncated(tokenizer, prompt_ids, full_ids, len(empty_turn) - len(prompt_ids), max_length)
    return _joined(prompt_ids, full_ids[len(prompt_ids):])


def encode_rendered(tokenizer, text: str, prompt_text: str | None = None, max_length: int | None = None) -> dict:
    """Encodes a conversation already rendered with the chat template into one string (what OpenRLHF sends as
    `query`, verl as `input`) exactly as `encode_pair` encodes (prompt, response): the prompt is `prompt_text` when
    given (the rendered prompt the text starts with), else everything up to the last assistant-turn opener; the
    response's own end markers (end of turn, EOS, padding a client left in) are replaced by the template's, and a
    leading BOS a client cut off is restored. So the reward of a rendered text equals the reward of its parts."""
    markers = template_markers(tokenizer)
    text = _strip_padding(tokenizer, text)
    if prompt_text is not None:
        prompt_text = _strip_padding(tokenizer, prompt_text)
        if not text.startswith(prompt_text):
            raise InputError("prompts: the text does not start with its prompt; send the prompt exactly as it was "
                             "rendered into the text, or no prompts (the boundary is then found from the template).")
    else:
        boundary = text.rfind(markers["opener"])
        if boundary < 0:
            raise InputError(f"input: no assistant turn ({markers['opener']!r}) in the text; render prompt and "
                             "response with the model's chat template, or send them as separate fields.")
        prompt_text = text[:boundary + len(markers["opener"])]
    response = text[len(prompt_text):]
    for end in (markers["end"], markers["end"].rstrip(), tokenizer.eos_token):
        if end and response.endswith(end):
            response = response[:-len(end)]
            break
    if markers["start"] and not prompt_text.startswith(markers["start"]):
        prompt_text = markers["start"] + prompt_text
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt_text + response + markers["end"], add_special_tokens=False)["input_ids"]
    if full_ids[:len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise InputError("input: the prompt does not tokenize as a prefix of the text; send prompt and response "
                         "as separate fields.")
    if max_length is not None and len(full_ids) > max_length:
        end_length = len(tokenizer(prompt_text + markers["end"], add_special_tokens=False)["input_ids"])
        return _truncated(tokenizer, prompt_ids, full_ids, end_length - len(prompt_ids), max_length)
    return _joined(prompt_ids, full_ids[len(prompt_ids):])


def template_markers(tokenizer) -> dict:
    """The chat template's text around one exchange: `start` (a BOS it puts first, else ""), `opener` (between the
    user's message and the assistant's: ends every rendered prompt) and `end` (after the assistant's message)."""
    probe = [{"role": "user", "content": "\x00user\x00"}]
    prompt = render_text(tokenizer, probe, add_generation_prompt=True)
    full = render_text(tokenizer, probe + [{"role": "assistant", "content": "\x00reply\x00"}],
                       add_generation_prompt=False)
    bos = tokenizer.bos_token
    return {"start": bos if bos and prompt.startswith(bos) else "",
            "opener": prompt[prompt.index("\x00user\x00") + len("\x00user\x00"):],
            "end": full[full.index("\x00reply\x00") + len("\x00reply\x00"):]}


def _strip_padding(tokenizer, text: str) -> str:
    """`text` without the pad tokens a client left at either end."""
    pad = tokenizer.pad_token
    if pad and pad != tokenizer.eos_token:
        while text.startswith(pad):
            text = text[len(pad):]
        while text.endswith(pad):
            text = text[:-len(pad)]
    return text


def _joined(prompt_ids: list, response_ids: list) -> dict:
    input_ids = prompt_ids + response_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "prompt_lengths": len(prompt_ids)}


def render_text(tokenizer, messages, add_generation_prompt: bool) -> str:
    """`messages` rendered through the model's chat template as text (what `render_ids` tokenizes)."""
    return tokenizer.apply_chat_template(messages, chat_template=chat_template_for(tokenizer),
                                         add_generation_prompt=add_generation_prompt, tokenize=False)


def encode_batch(tokenizer, prompts, responses, device=None, max_length: int | None = None,
                 allow_empty: bool = False) -> dict:
    """Model inputs (`input_ids`, `attention_mask`, `prompt_lengths` tensors) of (prompt, response) pairs, padded
    into one batch on `device`: what `SMoERewardModel.forward` and `.embed` take."""
    return padded_batch(tokenizer, [encode_pair(tokenizer, prompt, response, max_length, allow_empty)
                                    for prompt, response in zip(prompts, responses)], device)


def padded_batch(tokenizer, encodings: list, device=None) -> dict:
    """Encodings (`encode_pair`, `encode_rendered`) right-padded into one batch of tensors on `device`."""
    tokenizer.padding_side = "right"
    batch = tokenizer.pad([{"input_ids": e["input_ids"]} for e in encodings], return_tensors="pt")
    batch["prompt_lengths"] = torch.tensor([e["prompt_lengths"] for e in encodings])
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _truncated(tokenizer, prompt_ids, full_ids, end_length: int, max_length: int) -> dict:
    """prompt + response cut to exactly `max_length` tokens (see `encode_pair`); `end_length`: the template's
    end-of-turn tokens after a response.

    The least that must survive is the prompt's leading special token (if any) with its assistant-turn opener (the
    boundary the model finds) and the response's final token with the end-of-turn tokens after it; only a
    `max_length` too small for that is an error. A short response after a long prompt is kept whole."""
    response_ids = full_ids[len(prompt_ids):]
    tail = min(max(end_length, 0) + 1, len(response_ids))  # end-of-turn tokens + the response's final token
    head = 1 if prompt_ids[0] in tokenizer.all_special_ids else 0
    opener = assistant_turn_pattern(tokenizer)
    boundary = len(opener) if opener and prompt_ids[-len(opener):] == opener else 1
    min_prompt = min(len(prompt_ids), head + boundary)
    if min_prompt + tail > max_length:
        raise InputError(f"max_length: {max_length} tokens cannot hold the prompt boundary ({min_prompt} tokens) and "
                         f"the response's last {tail} tokens; raise max_length to at least {min_prompt + tail}.")
    # the prompt gives up its oldest tokens first, down to half the budget; then the response loses its middle
    keep_prompt = max(max_length - len(response_ids), min(len(prompt_ids), max(max_length // 2, min_prompt)))
    keep_prompt = min(keep_prompt, max_length - tail)
    keep_response = max_length - keep_prompt
    prompt_ids = prompt_ids[:head] + prompt_ids[len(prompt_ids) - keep_prompt + head:]
    if len(response_ids) > keep_response:
        response_ids = response_ids[:keep_response - tail] + response_ids[-tail:]
    return _joined(prompt_ids, response_ids)
