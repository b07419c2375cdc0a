"""The hidden-state cache: the states entering one layer of a decoder backbone, for tuning the layers above."""

import numpy as np
import torch

from ..runtime.loading import weights_digest
from .text_cache import TextCache, in_dtype


class HiddenStateCache(TextCache):
    """The hidden states entering layer `layer` of a decoder backbone, one (T, H) sequence per text, for tuning
    the layers above (`hf_smoe.training.backbone_tuning`): `bottom` is the backbone's lower part (`split_layers`), whose
    weights (every byte), the layer index and the encoding settings make the fingerprint. Texts are encoded as
    the embedding cache encodes them; shards are smaller (64 texts), since each text stores T vectors."""

    columns = {"states": "sequence"}

    def __init__(self, bottom, tokenizer, layer: int, *, shard_size=64, **options):
        self.bottom, self.layer = bottom, layer
        self._compute_bottom = None
        super().__init__(tokenizer, next(bottom.parameters()).device, bottom.config.hidden_size,
                         shard_size=shard_size, **options)

    def fingerprint(self) -> str:
        return self._fingerprint_of({"kind": "hidden_states", "layer": self.layer,
                                     "backbone_config": self.bottom.config.to_dict() | {"_name_or_path": None},
                                     "lower_layers_weights": weights_digest(self.bottom)})

    def states(self, keys: np.ndarray) -> list:
        """The stored (T, H) states of each key (64-character hex, see `text_key`), as float32 tensors."""
        rows = self.store.rows(keys)
        if (rows < 0).any():
            raise RuntimeError("HiddenStateCache.states: a text is not cached; embed it first.")
        return [torch.from_numpy(value.astype(np.float32)) for value in self.store.read(rows)["states"]]

    @torch.inference_mode()
    def compute(self, encodings: list) -> list:
        """The states of encoded texts, computed now (float32 arrays, one (T_i, H) per text)."""
        if self._compute_bottom is None:
            self._compute_bottom = in_dtype(self.bottom, self.dtype)
        inputs = self._padded([{"input_ids": encoding["input_ids"]} for encoding in encodings])
        hidden = self._compute_bottom(**inputs, use_cache=False).last_hidden_state.float().cpu().numpy()
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [hidden[i, :length] for i, length in enumerate(lengths)]

    def _forward(self, batch):
        states = self.compute([encoding for _, encoding in batch])
        return [(key, {"states": value}) for (key, _), value in zip(batch, states)]
