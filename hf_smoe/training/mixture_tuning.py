"""Tuning the backbone's top k layers under the mixture objective (`smoe train --tune_layers k`).

A frozen representation holds each category's preference in its own direction, and a single reward head learns
their compromise; tuning the top layers under that single head learns the compromise again (docs/results.md).
Here the top layers, the router and the experts train jointly with the paper's objective (Eq. 7), so the
representation is shaped to serve several experts. As in `smoe tune-backbone`, the lower L - k layers never change:
the states entering layer L - k are cached once per text (`HiddenStateCache`) and every step runs only the top
layers, forward and backward. Both representations come from the tuned layers' output, as in a full forward pass:
the response's at its last token, the prompt's at its last prompt token of the same pass. The result is a normal
full checkpoint (the tuned layers are inside the backbone it carries), so it loads with `AutoModel.from_pretrained`
where hf_smoe is not installed, and scores exactly as it trained.
"""

from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from ..data import PAIR_METADATA
from ..errors import InputError
from ..features import FEATURE_COLUMNS, HiddenStateCache
from ..modeling.modeling_smoe import pool
from .top_layers import add_lora_adapters, keyed_pairs, split_layers, state_batch


class TopLayersMixture(nn.Module):
    """An `SMoERewardModel` trained from the states entering its backbone's top k layers: `embed_states` gives the
    representations a full forward pass gives, `forward` is the model's own (its head on representations). The
    model's parameters are this module's, so the trainer family's optimizer groups and checkpoints see the usual
    `backbone` / `head` names, and the tuned layers live in the model's backbone."""

    def __init__(self, model, k: int):
        super().__init__()
        if model.config.prompt_representation != "same_pass":
            raise InputError("tune_layers: needs a decoder backbone, whose prompt representation comes from the same "
                             f"pass (this model's is {model.config.prompt_representation!r}).")
        self.model, self.config = model, model.config
        bottom, top = split_layers(model.backbone, k, field="tune_layers")
        # views of the model's own modules (`bottom` feeds the hidden-state cache), not registered a second time
        object.__setattr__(self, "bottom", bottom)
        object.__setattr__(self, "top", top)

    @property
    def head(self):
        return self.model.head

    def embed_states(self, states: torch.Tensor, lengths: torch.Tensor, prompt_lengths: torch.Tensor) -> tuple:
        """(g(x), h(x, y)) of right-padded states (N, T, H) entering the top layers."""
        mask = (torch.arange(states.shape[1], device=states.device) < lengths.unsqueeze(1)).long()
        hidden = self.top(inputs_embeds=states, attention_mask=mask, use_cache=False).last_hidden_state
        return pool(hidden, prompt_lengths, self.config.pooling), pool(hidden, lengths, self.config.pooling)

    def forward(self, **inputs):
        return self.model(**inputs)


def prepare_top_layers(model, k: int, lora_rank: int = 0, lora_alpha: float = 16.0) -> tuple:
    """(trainable `TopLayersMixture`, LoRA adapters or None): `model`'s backbone unfrozen in its top k layers and
    final norm only (or rank-`lora_rank` LoRA adapters on their linear maps), the lower layers frozen."""
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
        raise InputError(f"lora_rank: must be 0 (full layers) or a positive rank, got {lora_rank!r}.")
    wrapper = TopLayersMixture(model, k)
    model.config.freeze_backbone = False  # else the model's train() would freeze the layers again
    model.backbone.requires_grad_(False)
    for module in (*wrapper.top.layers, wrapper.top.norm):
        module.requires_grad_(True)
    adapters = add_lora_adapters(model.backbone, wrapper.top, lora_rank, lora_alpha) if lora_rank else None
    return wrapper, adapters


def finish_top_layers(model, adapters) -> None:
    """The tuned model as a frozen reward model again: LoRA adapters merged into the weights, backbone frozen."""
    if adapters is not None:
        adapters.merge_and_unload()
    model.config.freeze_backbone = True
    model.eval()


def cached_state_sets(wrapper: TopLayersMixture, tokenizer, splits: dict, **cache_options) -> tuple:
    """(the train and validation pairs keyed into the hidden-state cache of `wrapper`'s lower layers, that cache):
    what training the top layers reads. `cache_options`: `HiddenStateCache`'s (cache_dir, max_length, ...)."""
    states = HiddenStateCache(wrapper.bottom, tokenizer, layer=len(wrapper.bottom.layers), **cache_options)
    return {name: state_pairs(splits[name], states) for name in ("train", "validation")}, states


def state_pairs(pairs, cache: HiddenStateCache):
    """The pairs with their texts' keys in the hidden-state cache (computing what is missing), each side's prompt
    length (the prompt representation's position) and `length`, the longer side's tokens: what
    `--train_sampling_strategy group_by_length` batches by, so short pairs are not padded to a long one."""
    keyed = keyed_pairs(pairs, cache)
    encoded = {side: [cache.encode((prompt, response)) for prompt, response in zip(pairs["prompt"], pairs[side])]
               for side in ("chosen", "rejected")}
    for side in ("chosen", "rejected"):
        keyed = keyed.add_column(f"{side}_prompt_length", [e["prompt_lengths"] for e in encoded[side]])
    return keyed.add_column("length", [max(len(chosen["input_ids"]), len(rejected["input_ids"]))
                                       for chosen, rejected in zip(encoded["chosen"], encoded["rejected"])])


@dataclass
class MixtureStatesCollator:
    """A batch of pairs as the cached states of their chosen sides, then their rejected ones, with each side's
    length and prompt length: what `TopLayersMixture.embed_states` reads. `recompute` re-runs the lower layers on
    the batch's tokens instead of reading the cache (the slow way, `smoe bench tune`'s baseline)."""

    cache: HiddenStateCache
    recompute: bool = False

    def __call__(self, rows):
        if self.recompute:
            texts = [(row["prompt"], row[side]) for side in ("chosen", "rejected") for row in rows]
            batch = state_batch(self.cache.compute([self.cache.encode(text) for text in texts]))
        else:
            keys = np.array([row["chosen_key"] for row in rows] + [row["rejected_key"] for row in rows],
                            dtype="S64")
            batch = state_batch(self.cache.states(keys))
        batch.pop("labels")
        batch["prompt_lengths"] = torch.tensor([row["chosen_prompt_length"] for row in rows]
                                               + [row["rejected_prompt_length"] for row in rows])
        return batch


@torch.inference_mode()
def tuned_pair_features(wrapper: TopLayersMixture, cache: HiddenStateCache, pairs, batch_pairs: int = 32) -> Dataset:
    """The pair features (`EmbeddingCache.pair_features`' columns) of the tuned model, computed from the cached
    states entering its top layers: only the k tuned layers run, so measuring several tuned heads on the same
    pairs never re-runs the lower layers. The same computation as a full forward pass of the tuned model in
    float32 (the prompt representation from the chosen response's pass)."""
    keyed = state_pairs(pairs, cache)
    collate = MixtureStatesCollator(cache)
    columns = {name: [] for name in FEATURE_COLUMNS}
    for start in range(0, len(keyed), batch_pairs):
        batch = collate([keyed[row] for row in range(start, min(start + batch_pairs, len(keyed)))])
        prompts, responses = wrapper.embed_states(batch["states"], batch["lengths"], batch["prompt_lengths"])
        chosen, rejected = responses.chunk(2)
        for name, value in zip(FEATURE_COLUMNS, (prompts.chunk(2)[0], chosen, rejected)):
            columns[name].extend(value.float().numpy())
    metadata = [name for name in PAIR_METADATA if name in pairs.column_names]
    return Dataset.from_dict(columns | {name: pairs[name] for name in metadata})
