"""Turning (prompt, response) into model inputs: the chat-template rendering the model's prompt boundary relies on."""

import torch

from ..modeling.modeling_smoe import assistant_turn_pattern, render_ids
from ..errors import InputError


def as_messages(prompt) -> list:
    """A prompt given as text becomes one user message; chat messages pass through."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


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
    is scored on the template's empty assistant turn.

    Returns:
        dict with `input_ids`, `attention_mask` (lists) and `prompt_lengths` (int: tokens up to and including the
        assistant-turn opener).
    """
    messages = as_messages(prompt)
    if not response and not allow_empty:
        raise InputError("response: empty text; every pair needs two non-empty responses.")
    prompt_ids = render_ids(tokenizer, messages, add_generation_prompt=True)
    full_ids = render_ids(tokenizer, messages + [{"role": "assistant", "content": response}],
                          add_generation_prompt=False)
    if full_ids[:len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise InputError("tokenizer: its chat template does not render the prompt as a prefix of prompt + response, "
                         "so the prompt boundary is undefined; use a template whose generation prompt is a prefix.")
    response_ids = full_ids[len(prompt_ids):]
    if max_length is not None and len(full_ids) > max_length:
        prompt_ids, response_ids = _truncate(tokenizer, messages, prompt_ids, response_ids, max_length)
    input_ids = prompt_ids + response_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "prompt_lengths": len(prompt_ids)}


def encode_batch(tokenizer, prompts, responses, device=None, max_length: int | None = None,
                 allow_empty: bool = False) -> dict:
    """Model inputs (`input_ids`, `attention_mask`, `prompt_lengths` tensors) of (prompt, response) pairs, padded
    into one batch on `device`: what `SMoERewardModel.forward` and `.embed` take."""
    encoded = [encode_pair(tokenizer, prompt, response, max_length, allow_empty)
               for prompt, response in zip(prompts, responses)]
    batch = tokenizer.pad([{"input_ids": e["input_ids"]} for e in encoded], return_tensors="pt")
    batch["prompt_lengths"] = torch.tensor([e["prompt_lengths"] for e in encoded])
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _truncate(tokenizer, messages, prompt_ids, response_ids, max_length):
    """Cuts prompt + response to exactly `max_length` tokens (see `encode_pair`).

    The least that must survive is the prompt's leading special token (if any) with its assistant-turn opener (the
    boundary the model finds) and the response's final token with the end-of-turn tokens after it; only a
    `max_length` too small for that is an error. A short response after a long prompt is kept whole."""
    empty_turn = render_ids(tokenizer, messages + [{"role": "assistant", "content": ""}], add_generation_prompt=False)
    tail = max(len(empty_turn) - len(prompt_ids), 0) + 1  # end-of-turn tokens + the response's final token
    tail = min(tail, len(response_ids))
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
    return prompt_ids, response_ids
