"""Reward-tuning a backbone (`smoe tune-backbone`): its top k layers and a Bradley-Terry head, trained on a preference
set's train split from cached hidden states, so the frozen lower layers run once per text.

Why: the experts can only separate what the backbone's representation separates, and a chat model is not a reward
model (a linear head on SmolLM2-135M-Instruct is at chance on HH, docs/results.md). The paper starts from a 3B reward
model; this gives any decoder backbone that step on a CPU. The lower L - k layers never change, so the states
entering layer L - k are a pure function of the text: `HiddenStateCache` stores them once (fingerprinted, float16
for 16-bit compute, memory-mapped, resumable), and every epoch runs only the top k layers forward and backward. The
result is an ordinary backbone folder (`AutoModel.from_pretrained`, no hf_smoe needed) that `--backbone` takes.
"""

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModel, AutoTokenizer, Trainer

from ..data import load_pairs
from ..errors import InputError
from ..evaluation import bradley_terry_loss, bradley_terry_probe
from ..features import HiddenStateCache
from ..metrics import pairwise_accuracy
from ..modeling.configuration_smoe import POOLINGS
from ..modeling.modeling_smoe import pool
from ..runtime import check_output_dir, model_load_errors, publish, resolve_backbone, save_run, staging_dir
from .arguments import BackboneTuningArguments, BackboneTuningTrainingArguments, DataArguments
from .job import run_inputs, split_for_training
from .top_layers import add_lora_adapters, keyed_pairs, split_layers, state_batch
from .optim import PartLearningRatesMixin

HEAD_INITS = ("probe", "random")


class TopLayersRewardModel(nn.Module):
    """The backbone's top layers and a linear reward r(x, y) = w . h(x, y) + b on the pooled final state, trained
    with the Bradley-Terry loss -log sigma(r(x, y_w) - r(x, y_l)). Laid out as an `SMoERewardModel` is (`backbone`:
    here `split_layers`' top view; `head`: here a single expert, no router), so the family's `optimizer_groups`
    tells its parts apart."""

    def __init__(self, top, hidden_size: int, pooling: str = "last_token"):
        super().__init__()
        self.backbone, self.pooling = top, pooling
        self.head = nn.Linear(hidden_size, 1)

    def pooled(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(2B, H): the top layers' pooled final state of each side, what the head reads."""
        mask = (torch.arange(states.shape[1], device=states.device) < lengths.unsqueeze(1)).long()
        hidden = self.backbone(inputs_embeds=states, attention_mask=mask, use_cache=False).last_hidden_state
        return pool(hidden, lengths, self.pooling)

    def rewards(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(states, lengths)).squeeze(-1)

    def forward(self, states, lengths, labels=None):
        """`states` (2B, T, H): the B chosen sides, then the B rejected ones, right-padded; `lengths` (2B,).
        `labels` (all 1) is accepted so the Trainer's `prediction_step` finds label ids; the chosen side always
        wins, so the loss is the Bradley-Terry loss of the margins."""
        chosen, rejected = self.rewards(states, lengths).chunk(2)
        return {"loss": bradley_terry_loss(chosen - rejected), "logits": torch.stack([chosen, rejected], dim=1)}


@dataclass
class CachedStatesCollator:
    """A batch of pairs (their text rows in the hidden-state cache) as the cached states of the chosen sides, then
    the rejected ones: the fast path."""

    cache: HiddenStateCache

    def __call__(self, rows):
        keys = np.array([row["chosen_key"] for row in rows] + [row["rejected_key"] for row in rows], dtype="S64")
        return state_batch(self.cache.states(keys))


@dataclass
class RecomputedStatesCollator:
    """The same batch with the lower layers re-run on its tokens every time (no gradient): the slow way the cache
    replaces, kept as the benchmark's baseline."""

    cache: HiddenStateCache

    def __call__(self, rows):
        texts = [(row["prompt"], row[side]) for side in ("chosen", "rejected") for row in rows]
        encodings = [self.cache.encode(text) for text in texts]
        return state_batch(self.cache.compute(encodings))


@torch.no_grad()
def initialize_head_by_probe(model: TopLayersRewardModel, pairs, collator, batch_size: int) -> None:
    """Linear probe, then fine-tune (LP-FT; Kumar et al., 2022): the head starts at the optimal linear
    Bradley-Terry probe (`probes.bradley_terry_probe`) of the untuned top layers' pooled train states, so the
    first steps tune the layers toward a head that already reads the preference, instead of pulling them toward a
    random one (which distorts the features a pretrained representation holds)."""
    device = next(model.parameters()).device
    differences = []
    for batch in DataLoader(pairs, batch_size=batch_size, collate_fn=collator):
        chosen, rejected = model.pooled(batch["states"].to(device), batch["lengths"].to(device)).float().chunk(2)
        differences.append((chosen - rejected).cpu())
    model.head.weight.copy_(bradley_terry_probe(torch.cat(differences)).unsqueeze(0))
    model.head.bias.zero_()


def pairwise_accuracy_metric(prediction) -> dict:
    """`compute_metrics`: the share of pairs whose chosen reward is above the rejected one."""
    logits = torch.as_tensor(prediction.predictions)
    return {"accuracy": pairwise_accuracy(logits[:, 0], logits[:, 1]).item()}


class TopLayersTrainer(PartLearningRatesMixin, Trainer):
    """The backbone tuning's member of the trainer family: the top layers train at `learning_rate`, the head at
    `head_learning_rate`, grouped for the optimizer as every trainer of the family groups them (`optim`).

    It is not an `SMoETrainer`: everything that trainer adds to the `Trainer` (reading cached head features, the
    multi-term mixture objective and its logged terms, routing metrics, the collapse warning) concerns a router and
    K experts this model does not have. Its loss is the Bradley-Terry loss the model's forward returns, which the
    Trainer's own `compute_loss` and `prediction_step` read; what the family shares with it is the optimizer."""

    def __init__(self, *args, head_learning_rate: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate

    def part_learning_rates(self) -> dict:
        return {"backbone": self.args.learning_rate, "experts": self.head_learning_rate,
                "router": self.head_learning_rate}


def load_tunable_backbone(name_or_path: str, k: int):
    """(backbone in fp32 with only its top k layers and final norm trainable, tokenizer, bottom, top)."""
    path = resolve_backbone(name_or_path)
    with model_load_errors("backbone", name_or_path):
        backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    bottom, top = split_layers(backbone, k)
    backbone.requires_grad_(False)
    for module in (*top.layers, top.norm):
        module.requires_grad_(True)
    return backbone, tokenizer, bottom, top


def tune_backbone(data: DataArguments, tuning: BackboneTuningArguments, training: BackboneTuningTrainingArguments,
                  *, recompute_states: bool = False) -> dict:
    """`smoe tune-backbone`: `tune_on_splits` on the train and validation splits of `data`, split exactly as
    `smoe train` splits it (the same seed and fractions give the same test set, which this job never reads)."""
    check_output_dir(training.output_dir, overwrite=training.overwrite_output_dir, flag="--output_dir",
                     protected=run_inputs(backbone=tuning.backbone, dataset=data.dataset, cache=data.cache_dir))
    pairs = load_pairs(data.dataset, data.format, max_pairs=data.max_pairs, seed=data.split_seed)
    splits = split_for_training(pairs, data.split_seed, validation=data.validation_fraction,
                                test=data.test_fraction)
    job = {"data": dataclasses.asdict(data)}
    return tune_on_splits(splits, tuning, training, job, cache_dir=data.cache_dir, max_length=data.max_length,
                          recompute_states=recompute_states)


def tune_on_splits(splits: dict, tuning: BackboneTuningArguments, training: BackboneTuningTrainingArguments,
                   job: dict, *, cache_dir=None, max_length: int = 1024, recompute_states: bool = False) -> dict:
    """Tunes the top `tuning.layers` layers of `tuning.backbone` and a Bradley-Terry head on `splits["train"]`,
    evaluating on `splits["validation"]` each epoch, and writes the tuned backbone and its tokenizer to
    `training.output_dir` with `results.json` (the command, `job` and the two argument sets, validation accuracy,
    the time per epoch and the one-off time of filling the hidden-state cache). `recompute_states` re-runs the
    lower layers every step instead of reading the cache (the benchmark's baseline)."""
    output_dir = check_output_dir(training.output_dir, overwrite=training.overwrite_output_dir, flag="--output_dir",
                                  protected=run_inputs(backbone=tuning.backbone, cache=cache_dir))
    if tuning.pooling not in POOLINGS:
        raise InputError(f"pooling: unknown {tuning.pooling!r}; choose one of {POOLINGS}.")
    if tuning.head_init not in HEAD_INITS:
        raise InputError(f"head_init: unknown {tuning.head_init!r}; choose one of {HEAD_INITS}.")
    if isinstance(tuning.lora_rank, bool) or not isinstance(tuning.lora_rank, int) or tuning.lora_rank < 0:
        raise InputError(f"lora_rank: must be 0 (full layers) or a positive rank, got {tuning.lora_rank!r}.")
    if not tuning.lora_alpha > 0:
        raise InputError(f"lora_alpha: must be positive, got {tuning.lora_alpha!r}.")
    backbone, tokenizer, bottom, top = load_tunable_backbone(tuning.backbone, tuning.layers)
    cache = HiddenStateCache(bottom, tokenizer, layer=len(backbone.layers) - tuning.layers, cache_dir=cache_dir,
                             max_length=max_length)
    start = time.perf_counter()
    sets = {name: splits[name] if recompute_states else keyed_pairs(splits[name], cache)
            for name in ("train", "validation")}
    caching_seconds = time.perf_counter() - start
    torch.manual_seed(training.seed)
    adapters = add_lora_adapters(backbone, top, tuning.lora_rank, tuning.lora_alpha) if tuning.lora_rank else None
    model = TopLayersRewardModel(top, backbone.config.hidden_size, tuning.pooling).to(training.device)
    staging = staging_dir(output_dir)
    shutil.rmtree(staging, ignore_errors=True)  # an interrupted run's files (this job starts over; its cache stays)
    args = dataclasses.replace(training, output_dir=str(staging / "trainer"))
    collator = (RecomputedStatesCollator if recompute_states else CachedStatesCollator)(cache)
    start = time.perf_counter()
    if tuning.head_init == "probe":
        initialize_head_by_probe(model, sets["train"], collator, training.per_device_eval_batch_size)
    probe_seconds = time.perf_counter() - start
    trainer = TopLayersTrainer(model=model, args=args, train_dataset=sets["train"], eval_dataset=sets["validation"],
                               data_collator=collator, compute_metrics=pairwise_accuracy_metric,
                               head_learning_rate=tuning.head_learning_rate)
    # the probe head on the untuned layers (LP), the baseline the tuning (FT) must beat
    before = trainer.evaluate()["eval_accuracy"] if tuning.head_init == "probe" else None
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    results = {"validation_accuracy": trainer.evaluate()["eval_accuracy"], "probe_validation_accuracy": before,
               "layers_tuned": tuning.layers, "layers": len(backbone.layers), "train_pairs": len(sets["train"]),
               "validation_pairs": len(sets["validation"]), "train_seconds": seconds,
               "seconds_per_epoch": seconds / training.num_train_epochs, "hidden_state_seconds": caching_seconds,
               "probe_seconds": probe_seconds,
               "trainable_layer_parameters": sum(p.numel() for p in top.parameters() if p.requires_grad),
               "hidden_state_cache": None if recompute_states else str(cache.directory)}
    shutil.rmtree(staging / "trainer", ignore_errors=True)
    if adapters is not None:
        adapters.merge_and_unload()  # W + (alpha / r) B A, in place: the folder is a plain backbone again
    backbone.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    job = job | {"tuning": dataclasses.asdict(tuning), "training": json.loads(training.to_json_string())}
    save_run(staging, job, results)
    publish(staging, output_dir)
    return results
