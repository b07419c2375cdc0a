"""`SMoERewardTrainer`: TRL's `RewardTrainer`, training the paper's objective end to end (`pip install hf-smoe[trl]`).

`smoe train` (`SMoETrainer`) trains the head on a frozen backbone's cached features. This trainer runs the backbone
every step, so the backbone can be unfrozen, partly frozen or LoRA-adapted (`peft_config`), on TRL's dataset
formats (standard or conversational, explicit or implicit prompt) and with TRL's defaults (gradient checkpointing,
bf16). The loss is Eq. 7 with the model config's λ's; the experts and the router take their own learning rates
(App. A) and the backbone takes `learning_rate`.
"""

import copy
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from torch.nn.utils.rnn import pad_sequence
from trl import RewardConfig, RewardTrainer

from .data import load_pairs
from .errors import InputError
from .losses import loss_weights
from .metrics import pairwise_accuracy
from .modeling.modeling_smoe import mixture_reward
from .runtime import load_checkpoint
from .training import SIDES, PartLearningRatesMixin, distributed_objective, tokenize_pairs

TOKEN_COLUMNS = [f"{side}_{name}" for side in SIDES for name in ("input_ids", "prompt_lengths")]


@dataclass
class SMoERewardTrainerConfig(RewardConfig):
    """`RewardConfig` with the head's learning rates. `learning_rate` (TRL's default, 1e-4) is the backbone's, for
    its trainable parameters (unfrozen layers or LoRA adapters); the head keeps the paper's rates.

    Args:
        experts_learning_rate (`float`, defaults to 2e-3): learning rate of the K experts (App. A).
        router_learning_rate (`float`, defaults to 5e-4): learning rate of the router (App. A).
    """

    experts_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of the experts."})
    router_learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of the router."})


@dataclass
class PreferenceCollator:
    """TRL's batch layout (the chosen rows, then the rejected rows, right-padded) plus each row's prompt length,
    known from the encoding, so the model never has to search for the assistant-turn pattern."""

    pad_token_id: int

    def __call__(self, rows: list) -> dict:
        sequences = [torch.tensor(row[f"{side}_input_ids"]) for side in SIDES for row in rows]
        return {"input_ids": pad_sequence(sequences, batch_first=True, padding_value=self.pad_token_id),
                "attention_mask": pad_sequence([torch.ones_like(ids) for ids in sequences], batch_first=True),
                "prompt_lengths": torch.tensor([row[f"{side}_prompt_lengths"] for side in SIDES for row in rows])}


class SMoERewardTrainer(PartLearningRatesMixin, RewardTrainer):
    """`trl.RewardTrainer` for `SMoERewardModel`s with the paper's objective: the trainer family's member for TRL
    (`hf_smoe.training`: its optimizer groups parameters as `SMoETrainer`'s does, and its loss is the same
    `distributed_objective`). Takes a TRL `RewardConfig` or an `SMoERewardTrainerConfig` (default: the latter's
    defaults, i.e. TRL's with the head's learning rates).

    With `peft_config` the head is trained and saved in full beside the adapters (added to `modules_to_save`) and
    the backbone is unfrozen for the adapters (`config.freeze_backbone = False`); for an unfrozen or partly frozen
    backbone build the model with `freeze_backbone=False` (and freeze what should stay frozen).

    It overrides `RewardTrainer`'s public hooks (`compute_loss`, `create_optimizer` through the family's mixin, the
    `data_collator`) and, where TRL 1.16.0 has no public hook, two private ones: `_prepare_dataset` (how the
    datasets are encoded) and `_set_signature_columns_if_needed` (which columns reach the collator); its logged
    metrics go into TRL's `_metrics` store, which `RewardTrainer.log` averages.
    """

    def __init__(self, model, args: RewardConfig | None = None, train_dataset=None, eval_dataset=None,
                 peft_config=None, **kwargs):
        if isinstance(model, str):  # an hf_smoe checkpoint folder or Hub id, checked and loaded as `smoe eval` does
            model, tokenizer = load_checkpoint(model)
            kwargs.setdefault("processing_class", tokenizer)
        if args is None:
            args = SMoERewardTrainerConfig(f"{type(model).__name__}-trl")
        if peft_config is not None:
            peft_config = copy.copy(peft_config)  # the caller's config is left as it is
            peft_config.modules_to_save = sorted({*(peft_config.modules_to_save or []), "head"})
            model.config.freeze_backbone = False  # peft freezes the base weights itself; keep its adapters trainable
        super().__init__(model, args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         peft_config=peft_config, **kwargs)
        if kwargs.get("data_collator") is None:  # built here: TRL's __init__ settles the pad token
            self.data_collator = PreferenceCollator(self.processing_class.pad_token_id)
        self.lambdas = loss_weights(self.model.config)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """TRL's preference formats, read by `hf_smoe.data` (the same rules as `smoe train`) and encoded with the
        model's chat template and each row's prompt length; long pairs are truncated to `max_length` as in training
        (the prompt loses its oldest tokens first), not dropped. (TRL 1.16.0 encodes datasets only in this private
        method, which its `__init__` and `evaluate` call; it offers no public hook for the encoding.)"""
        if not isinstance(dataset, Dataset):
            raise InputError(f"{dataset_name}_dataset: a `datasets.Dataset` is needed (got {type(dataset).__name__}); "
                             "materialise a streamed dataset first.")
        if set(TOKEN_COLUMNS) <= set(dataset.column_names):
            return dataset
        return tokenize_pairs(load_pairs(dataset, "trl"), processing_class, max_length=args.max_length)

    def _set_signature_columns_if_needed(self):
        """The columns the collator reads. (TRL 1.16.0 names the columns `remove_unused_columns` keeps only here,
        privately; a `RewardConfig` keeps its default `remove_unused_columns=True`, which would drop the prompt
        lengths.)"""
        if self._signature_columns is None:
            self._signature_columns = TOKEN_COLUMNS

    def part_learning_rates(self) -> dict:
        """The backbone's trainable parameters at `learning_rate`, the experts and the router at their own rates
        (a plain TRL `RewardConfig` has none: the paper's)."""
        defaults = SMoERewardTrainerConfig
        return {"backbone": self.args.learning_rate,
                "experts": getattr(self.args, "experts_learning_rate", defaults.experts_learning_rate),
                "router": getattr(self.args, "router_learning_rate", defaults.router_learning_rate)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Eq. 7 on the batch: each pair routed by its prompt (read from the chosen row), the batch-level terms over
        the global batch when several processes train. Logs every term, the accuracy and the rewards (through
        `self._metrics`, the store `RewardTrainer.log` averages: TRL 1.16.0 has no public way to add a logged
        metric per step)."""
        mode = "train" if self.model.training else "eval"
        outputs = model(**inputs, use_cache=False)
        routing = outputs.routing_weights.chunk(2)[0]
        chosen, rejected = outputs.expert_rewards.chunk(2)
        terms = distributed_objective(routing, chosen, rejected, self.lambdas)
        with torch.no_grad():
            metrics = {name: value for name, value in terms.items() if name != "loss"}
            metrics["accuracy"] = pairwise_accuracy(mixture_reward(routing, chosen), mixture_reward(routing, rejected))
            metrics["mean_reward"] = outputs.logits.mean()
            for name, value in metrics.items():
                self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.detach()).mean().item())
        if return_outputs:
            return terms["loss"], {"logits": outputs.logits, "routing_weights": outputs.routing_weights,
                                   "expert_rewards": outputs.expert_rewards}
        return terms["loss"]
