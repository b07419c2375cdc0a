"""What tuning a decoder backbone's top layers from cached hidden states needs, whatever objective trains them
(`backbone_tuning`'s Bradley-Terry head, `mixture_tuning`'s mixture): the backbone split at layer L - k into a lower
part, whose output the `HiddenStateCache` stores once per text, and an upper part that trains; batches of cached
states; LoRA adapters on the upper part."""

import copy
import warnings

import torch
from datasets import Dataset
from torch import nn

from ..errors import InputError
from ..features import HiddenStateCache, PairTexts


def split_layers(backbone, k: int, field: str = "layers") -> tuple:
    """(bottom, top): two views of a decoder backbone that share its modules. `bottom(input_ids, attention_mask)`
    runs the embeddings and layers [0, L - k) and returns the states entering layer L - k (its final norm is
    skipped; with k = L, the token embeddings); `top(inputs_embeds=states, attention_mask=...)` runs layers
    [L - k, L) and the final norm. Training `top` tunes the backbone's own top layers in place. `field`: the
    option that gave k, named in errors."""
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not isinstance(getattr(backbone, "norm", None), nn.Module):
        raise InputError(f"backbone: {type(backbone).__name__} has no `layers` list and final `norm`; --{field} "
                         "tunes decoder backbones built like Llama (SmolLM2, Llama, Mistral, Qwen2, ...).")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(layers):
        raise InputError(f"{field}: must be an integer from 1 to {len(layers)} (the backbone has {len(layers)} "
                         f"layers), got {k!r}.")
    bottom, top = copy.copy(backbone), copy.copy(backbone)
    bottom._modules = dict(backbone._modules, layers=nn.ModuleList(layers[:len(layers) - k]), norm=nn.Identity())
    top._modules = dict(backbone._modules, layers=nn.ModuleList(layers[len(layers) - k:]))
    return bottom, top


def padded_states(states: list) -> tuple:
    """(right-padded float32 (N, T, H) states, their lengths) of N (T_i, H) sequences."""
    lengths = torch.tensor([len(s) for s in states])
    padded = torch.zeros(len(states), int(lengths.max()), states[0].shape[1], dtype=torch.float32)
    for row, value in enumerate(states):
        padded[row, :len(value)] = torch.as_tensor(value)
    return padded, lengths


def state_batch(states: list) -> dict:
    """The model's inputs for the (T_i, H) states of B chosen then B rejected sides: right-padded float32 states,
    their lengths, and the label "chosen wins" of each pair."""
    padded, lengths = padded_states(states)
    return {"states": padded, "lengths": lengths, "labels": torch.ones(len(states) // 2)}


def keyed_pairs(pairs, cache: HiddenStateCache) -> Dataset:
    """The pairs with the keys of their chosen and rejected texts in the cache (computing what is missing)."""
    keys = cache.embed(PairTexts(pairs)).astype(str)
    return pairs.add_column("chosen_key", list(keys[:len(pairs)])).add_column("rejected_key",
                                                                             list(keys[len(pairs):]))


def add_lora_adapters(backbone, top, rank: int, alpha: float):
    """Rank-`rank` LoRA adapters (peft) on every linear map of the top layers, everything else frozen: far fewer
    trainable weights than the full layers, so more layers can be tuned on few pairs. Returns the `PeftModel`,
    whose `merge_and_unload()` folds the adapters back into a plain backbone; `top` sees the adapters because
    they replace modules inside the layers it shares."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise InputError("lora_rank: LoRA needs peft; install it with pip install 'hf-smoe[trl]' (or pass "
                         "--lora_rank 0 to tune the full layers).") from None
    tuned = {id(layer) for layer in top.layers}
    targets = [f"layers.{index}.{name}" for index, layer in enumerate(backbone.layers) if id(layer) in tuned
               for name, module in layer.named_modules() if isinstance(module, nn.Linear)]
    with warnings.catch_warnings():  # peft calls a transformers property that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(backbone, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                   target_modules=targets))
