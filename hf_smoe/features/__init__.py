"""Features of texts: turning (prompt, response) into model inputs (`encode_pair`), and the caches that run each
unique text through a frozen model once and keep the result on disk, checksummed and resumable: the embedding cache
(`EmbeddingCache`: a reward model's prompt and response representations, and the per-pair features training and
evaluation read) and the hidden-state cache (`HiddenStateCache`: the states entering one backbone layer)."""

from .embedding_cache import EmbeddingCache, as_training_features
from .encoding import as_messages, encode_batch, encode_pair
from .hidden_state_cache import HiddenStateCache
from .store import FEATURE_COLUMNS, FeatureStore, shard_damage, text_key
from .text_cache import PairTexts, TextCache, feature_root, weights_digest

__all__ = [
    "EmbeddingCache", "FEATURE_COLUMNS", "FeatureStore", "HiddenStateCache", "PairTexts", "TextCache",
    "as_messages", "as_training_features", "encode_batch", "encode_pair", "feature_root", "shard_damage", "text_key",
    "weights_digest",
]
