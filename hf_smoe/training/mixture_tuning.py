"""Tuning the backbone's top k layers under the mixture objective (`smoe train --tune_layers k`).

A frozen representation holds each category's preference in its own direction, and a single reward head learns
their compromise; tuning the top layers under that single head learns the compromise again (docs/results.md).
Here the top layers, the router and the experts train jointly with the paper's objective (Eq. 7), so the
representation is shaped to serve several experts. As in `smoe tune-backbone`, the lower L - k layers never change:
the states entering layer L - k are cached once per text (`HiddenStateCache`) and every step runs only the top
layers, forward and backward. Both representations come from the tuned layers' output, as in a full forward pass:
the response's at its last token, the prompt's at its last prompt token of the chosen response's pass. The tokens a
pair's two texts share (the prompt, at least) run once: each pair is one packed row, the shared prefix, the rest of
the chosen text, the rest of the rejected one, with positions and a mask that give every token exactly the context
it has in its own text: with long prompts and short answers the top layers run about half the tokens. The result
is a normal full checkpoint (the tuned layers are inside the backbone it carries), so it loads with
`AutoModel.from_pretrained` where hf_smoe is not installed, and scores exactly as it trained.
"""

from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from ..data import PAIR_METADATA
from ..errors import InputError
from ..features import FEATURE_COLUMNS, HiddenStateCache
from .top_layers import add_lora_adapters, keyed_pairs, padded_states, split_layers


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
        attention = model.backbone.config._attn_implementation
        if attention not in ("eager", "sdpa"):
            raise InputError(f"tune_layers: the backbone computes attention with {attention!r}, which takes no custom "
                             "mask; the packed pairs need one. Load it with attn_implementation='sdpa' (the default).")
        self.model, self.config = model, model.config
        bottom, top = split_layers(model.backbone, k, field="tune_layers")
        # views of the model's own modules (`bottom` feeds the hidden-state cache), not registered a second time
        object.__setattr__(self, "bottom", bottom)
        object.__setattr__(self, "top", top)

    @property
    def head(self):
        return self.model.head

    def embed_pairs(self, states: torch.Tensor, chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor,
                    shared_lengths: torch.Tensor, prompt_lengths: torch.Tensor) -> tuple:
        """(g(x), h(x, y_w), h(x, y_l)) of packed pairs (`MixtureStatesCollator`): right-padded states (N, T, H)
        entering the top layers, each row a pair's chosen text (its first `chosen_lengths` tokens) then the rejected
        text's tokens after the `shared_lengths` both texts share."""
        position = torch.arange(states.shape[1], device=states.device).unsqueeze(0)
        chosen_end, shared = chosen_lengths.unsqueeze(1), shared_lengths.unsqueeze(1)
        in_chosen = position < chosen_end
        in_rejected = (position >= chosen_end) & (position < chosen_end + rejected_lengths.unsqueeze(1) - shared)
        # each token's position in its own text (padding at 0), and the keys on its own text's path
        text_position = torch.where(in_rejected, position - chosen_end + shared, position * in_chosen)
        on_path = torch.where(in_rejected.unsqueeze(2), (in_rejected | (position < shared)).unsqueeze(1),
                              in_chosen.unsqueeze(1))
        allowed = on_path & (text_position.unsqueeze(1) <= text_position.unsqueeze(2))
        mask = torch.zeros(allowed.shape, dtype=states.dtype, device=states.device)
        mask = mask.masked_fill(~allowed, torch.finfo(states.dtype).min).unsqueeze(1)
        hidden = self.top(inputs_embeds=states, attention_mask=mask, position_ids=text_position,
                          use_cache=False).last_hidden_state
        prompt, rejected = position < prompt_lengths.unsqueeze(1), in_rejected | (position < shared)
        return tuple(pool_tokens(hidden, tokens, self.config.pooling) for tokens in (prompt, in_chosen, rejected))

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
    """The pairs with their texts' keys in the hidden-state cache (computing what is missing), the chosen text's
    prompt length (the prompt representation's position), each text's length, the tokens both texts begin with
    (`shared_length`, at most all but each one's last) and `length`, the packed row's tokens: what
    `--train_sampling_strategy group_by_length` batches by, so short pairs are not padded to a long one."""
    keyed = keyed_pairs(pairs, cache)
    columns = {name: [] for name in ("prompt_length", "chosen_length", "rejected_length", "shared_length", "length")}
    for prompt, chosen, rejected in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        chosen, rejected = cache.encode((prompt, chosen)), cache.encode((prompt, rejected))
        chosen_ids, rejected_ids = chosen["input_ids"], rejected["input_ids"]
        limit = min(len(chosen_ids), len(rejected_ids)) - 1
        shared = next((i for i in range(limit) if chosen_ids[i] != rejected_ids[i]), limit)
        for name, value in zip(columns, (chosen["prompt_lengths"], len(chosen_ids), len(rejected_ids), shared,
                                         len(chosen_ids) + len(rejected_ids) - shared)):
            columns[name].append(value)
    for name, values in columns.items():
        keyed = keyed.add_column(name, values)
    return keyed


def pool_tokens(hidden: torch.Tensor, tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """Representation of the `tokens` (N, T, a boolean mask) of each packed row, as `pool` reads a plain row: the
    state of the last of them, or their mean."""
    if pooling == "last_token":
        last = tokens.shape[1] - 1 - tokens.flip(1).int().argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = tokens.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


@dataclass
class MixtureStatesCollator:
    """A batch of pairs as packed rows of cached states (the chosen text, then the rejected text's tokens after
    those both share) with their lengths: what `TopLayersMixture.embed_pairs` reads. `recompute` re-runs the lower
    layers on the batch's tokens instead of reading the cache, and `share_prefix=False` packs the rejected text whole
    (each text's prompt then runs once per text): the slow ways, `smoe bench tune`'s baselines."""

    cache: HiddenStateCache
    recompute: bool = False
    share_prefix: bool = True

    def __call__(self, rows):
        if self.recompute:
            texts = [(row["prompt"], row[side]) for side in ("chosen", "rejected") for row in rows]
            sides = self.cache.compute([self.cache.encode(text) for text in texts])
        else:
            sides = self.cache.states(np.array([row["chosen_key"] for row in rows]
                                               + [row["rejected_key"] for row in rows], dtype="S64"))
        shared = [row["shared_length"] if self.share_prefix else 0 for row in rows]
        states, _ = padded_states([torch.cat([torch.as_tensor(chosen), torch.as_tensor(rejected)[start:]])
                                   for chosen, rejected, start in zip(sides[:len(rows)], sides[len(rows):], shared)])
        return {"states": states, "chosen_lengths": torch.tensor([row["chosen_length"] for row in rows]),
                "rejected_lengths": torch.tensor([row["rejected_length"] for row in rows]),
                "shared_lengths": torch.tensor(shared), "prompt_lengths": torch.tensor([row["prompt_length"]
                                                                                      for row in rows])}


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
        for name, value in zip(FEATURE_COLUMNS, wrapper.embed_pairs(**batch)):
            columns[name].extend(value.float().numpy())
    metadata = [name for name in PAIR_METADATA if name in pairs.column_names]
    return Dataset.from_dict(columns | {name: pairs[name] for name in metadata})
