"""Tiny, randomly initialised backbones and word-level tokenizers built offline from a config.

They exercise every code path of a real backbone (causal Llama with a ChatML template, bidirectional BERT with no
template) in milliseconds; the tests and the interim demo use them.
"""

import os

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast
from .errors import InputError

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ("user assistant system human hello how are you today what is the a an of to and in it this that "
         "good bad answer question please thanks yes no why because cat dog sun rain code math poem story "
         "sure here short long kind rude helpful harmless").split()


def word_tokenizer(style: str = "chatml", extra_words=()) -> PreTrainedTokenizerFast:
    """`chatml`: Llama-style (BOS, ChatML chat template); `bert`: [CLS]/[SEP], lower-cased, no chat template."""
    words = list(WORDS) + [w for w in extra_words if w not in WORDS] + [".", ",", "?", "!", ":"]
    if style == "chatml":
        specials = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
        vocab = {token: i for i, token in enumerate(specials + words)}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                               special_tokens=[("<s>", vocab["<s>"])])
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHATML_TEMPLATE)
    if style == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab = {token: i for i, token in enumerate(specials + words)}
        backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]",
                                       unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]")
    raise InputError(f"style: unknown tokenizer style {style!r}; choose 'chatml' or 'bert'.")


def tiny_llama(tokenizer, hidden_size: int = 32, seed: int = 0, num_hidden_layers: int = 2) -> LlamaModel:
    import torch

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaModel(config).eval()


def tiny_bert(tokenizer, hidden_size: int = 32, seed: int = 0) -> BertModel:
    import torch

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                        pad_token_id=tokenizer.pad_token_id)
    return BertModel(config, add_pooling_layer=False).eval()


def save_tiny_backbone(directory, kind: str = "llama", hidden_size: int = 32, seed: int = 0, **config) -> str:
    """Writes a tiny backbone and its tokenizer to `directory` (a local 'Hub repo' for from_backbone); `config`:
    more of the builder's options (`num_hidden_layers` for llama)."""
    tokenizer = word_tokenizer("chatml" if kind == "llama" else "bert")
    build = {"llama": tiny_llama, "bert": tiny_bert}[kind]
    build(tokenizer, hidden_size=hidden_size, seed=seed, **config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return os.fspath(directory)


def save_tiny_causal_lm(directory, lm_head: bool = True, seed: int = 0) -> str:
    """Writes a tiny Llama causal LM (or, with `lm_head=False`, the same model without its head: a base model that
    cannot generate) and a ChatML word tokenizer that knows the judge's answers YES/NO/Yes/No. Its init is wide, so
    its answers depend on the prompt (at transformers' 0.02 every prompt gets the same first token)."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = word_tokenizer("chatml", extra_words=("YES", "NO", "Yes", "No"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.5, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    (LlamaForCausalLM if lm_head else LlamaModel)(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return os.fspath(directory)
