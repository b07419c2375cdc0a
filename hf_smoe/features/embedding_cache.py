"""The embedding cache: a `SMoERewardModel`'s frozen-backbone prompt and response representations, computed once
per text, and the per-pair features training, evaluation, steering, adaptation and interpretation run on."""

import copy

import numpy as np
import torch
from datasets import Dataset

from ..errors import InputError
from ..runtime.loading import weights_digest
from .encoding import scoring_encoding, training_encoding
from .store import EMBEDDING_COLUMNS, FEATURE_COLUMNS
from .text_cache import PairTexts, TextCache, in_dtype


class EmbeddingCache(TextCache):
    """Prompt and response representations of a `SMoERewardModel`'s frozen backbone, computed once per text.

    Args:
        model: the `SMoERewardModel` whose backbone, pooling and prompt representation define the features.
        tokenizer: its tokenizer (chat template).
        cache_dir: root folder; defaults to `$HF_SMOE_CACHE/features` (`~/.cache/hf_smoe/features`).
        max_length: truncation length for chat-template(x) + y (see `encode_pair`).
        batch_tokens: padded tokens per batch (default: `default_batch_tokens(device)`); texts are sorted by length
            so batches carry little padding.
        shard_size: texts per stored shard: the most work an interruption can lose.
        dtype: the dtype the backbone computes in (default: `fast_dtype(device)`: bf16 weights where the hardware
            has native bf16), through `in_dtype`. It sets the storage dtype (`storage_dtype`); both are in the
            fingerprint.
    """

    columns = EMBEDDING_COLUMNS

    def __init__(self, model, tokenizer, **options):
        self.model = model
        self._compute_model = None  # the model `_forward` runs: `model`, or one around a converted backbone
        super().__init__(tokenizer, next(model.parameters()).device, model.config.hidden_size, **options)

    def fingerprint(self) -> str:
        config = self.model.config
        return self._fingerprint_of({
            "backbone_config": config.backbone_config.to_dict() | {"_name_or_path": None},
            "backbone_weights": weights_digest(self.model.backbone),
            "pooling": config.pooling,
            "prompt_representation": config.prompt_representation,
        })

    @classmethod
    def of_checkpoint(cls, model, tokenizer, max_length: int | None = None, **options) -> "EmbeddingCache":
        """The cache of a trained model, encoding as its checkpoint records (`scoring_encoding`): evaluating,
        adapting or reading it reuses its training features instead of embedding everything again."""
        encoding = scoring_encoding(model.config, max_length)
        return cls(model, tokenizer, max_length=encoding["max_length"], dtype=encoding["dtype"], **options)

    @property
    def encoding(self) -> dict:
        """The encoding a head trained on these features records in its checkpoint."""
        return training_encoding(self.max_length, self.dtype)

    def lookup(self, items):
        """(prompt embeddings, response embeddings) as float32 tensors (N, H), in the order of `items`."""
        stored = self.store.read(self.store.rows(self.embed(items)))
        return tuple(torch.from_numpy(stored[name].astype(np.float32)) for name in self.columns)

    def pair_features(self, pairs) -> Dataset:
        """Per-pair features for a dataset in the common pair schema, memory-mapped (`FeatureStore.pair_features`):
        `prompt_embedding` (from the chosen response's pass), `chosen_embedding`, `rejected_embedding`, plus the
        pair metadata columns it has. Read them with `as_training_features`."""
        keys = self.embed(PairTexts(pairs))
        return self.store.pair_features(pairs, keys[:len(pairs)], keys[len(pairs):])

    @torch.inference_mode()
    def _forward(self, batch):
        prompts, responses = self._computing_model().embed(**self._padded([encoding for _, encoding in batch]))
        prompts, responses = prompts.float().cpu().numpy(), responses.float().cpu().numpy()
        return [(key, {"prompt_embedding": prompts[i], "response_embedding": responses[i]})
                for i, (key, _) in enumerate(batch)]

    def _computing_model(self):
        """`self.model`, or (made once) the same model around its backbone converted to `self.dtype`."""
        if self._compute_model is None:
            self._compute_model = with_backbone_in(self.model, self.dtype)
        return self._compute_model


def with_backbone_in(model, dtype: torch.dtype, attention: str | None = None):
    """`model`, or the same model (sharing its head) around a copy of its backbone converted to `dtype` (the
    precision features are computed in, whoever computes them) and, when given, computing attention with
    `attention` (a transformers attention implementation). The caller's model is never changed."""
    backbone = in_dtype(model.backbone, dtype)
    if attention is not None and backbone.config._attn_implementation != attention:
        if backbone is model.backbone:
            backbone = copy.deepcopy(backbone)
        backbone.set_attn_implementation(attention)
    if backbone is model.backbone:
        return model
    converted = type(model)(model.config, backbone=backbone).to(next(model.parameters()).device).eval()
    converted.head = model.head
    return converted


def as_training_features(features):
    """The pair-feature columns the trainer and evaluation read, as float32 torch tensors whatever the storage
    dtype, converted batch by batch as they are read."""
    missing = [name for name in FEATURE_COLUMNS if name not in features.column_names]
    if missing:
        raise InputError(f"train_dataset: missing feature columns {missing}; build it with "
                         "EmbeddingCache.pair_features.")
    return features.select_columns(list(FEATURE_COLUMNS)).with_format("torch", dtype=torch.float32)
