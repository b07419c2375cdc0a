"""Features of texts: turning (prompt, response) into model inputs (`encode_pair`), and the caches that run each
unique text through a frozen model once and keep the result on disk, checksummed and resumable: the embedding cache
(`EmbeddingCache`: a reward model's prompt and response representations, and the per-pair features training and
evaluation read) and the hidden-state cache (`HiddenStateCache`: the states entering one backbone layer)."""

from ..runtime.loading import weights_digest
from .embedding_cache import EmbeddingCache, as_training_features, with_backbone_in
from .encoding import (DEFAULT_MAX_LENGTH, as_messages, encode_batch, encode_pair, encode_rendered, padded_batch,
                       scoring_encoding, training_encoding)
from .hidden_state_cache import HiddenStateCache
from .store import FEATURE_COLUMNS, FeatureStore, shard_damage, text_key
from .text_cache import PairTexts, TextCache, feature_root

__all__ = [
    "DEFAULT_MAX_LENGTH", "EmbeddingCache", "FEATURE_COLUMNS", "FeatureStore", "HiddenStateCache", "PairTexts",
    "TextCache", "as_messages", "as_training_features", "encode_batch", "encode_pair", "encode_rendered",
    "feature_root", "padded_batch", "scoring_encoding", "shard_damage", "text_key", "training_encoding",
    "weights_digest", "with_backbone_in",
]
