"""The trainer family's `SMoETrainer`: the router and experts trained with a `transformers.Trainer`, on cached backbone
features or end to end on tokens.

The backbone is frozen by default, so an epoch needs only the three cached vectors of each pair: the prompt
representation and the two response representations. `SMoETrainer` computes the paper's objective (Eq. 7, with the
preset's weights from the model config) on them, logs every loss term, evaluates the paper's model-behaviour metrics
and saves the *full* model, so the checkpoint loads with `AutoModel.from_pretrained`.

The family: `SMoETrainer` (here), `TopLayersTrainer` (`backbone_tuning`: a backbone's top layers and a
Bradley-Terry head) and `hf_smoe.trl.SMoERewardTrainer` (TRL's `RewardTrainer`, end to end on TRL's formats). All
three group parameters for the optimizer in one place (`optim.PartLearningRatesMixin`), and the two that train a
mixture head compute its objective in one place (`distributed_objective`); each keeps its own base `Trainer` class
and overrides only the Trainer's public hooks.
"""

from collections import defaultdict
from dataclasses import dataclass

import torch
from transformers import Trainer

from ..evaluation import behaviour_metrics
from ..features import as_training_features, encode_pair
from ..losses import loss_weights, moe_preference_loss
from ..runtime import gather_with_grad
from .arguments import SMoETrainingArguments
from .callbacks import RoutingCollapseCallback
from .optim import PartLearningRatesMixin

SIDES = ("chosen", "rejected")


def tokenize_pairs(pairs, tokenizer, max_length: int = 1024):
    """Token inputs for the end-to-end path (unfrozen or LoRA backbones, or re-running a frozen one):
    `{chosen,rejected}_{input_ids,prompt_lengths}` per pair."""
    def encode(pair):
        row = {}
        for side in SIDES:
            encoded = encode_pair(tokenizer, pair["prompt"], pair[side], max_length=max_length)
            row[f"{side}_input_ids"], row[f"{side}_prompt_lengths"] = encoded["input_ids"], encoded["prompt_lengths"]
        return row

    return pairs.map(encode, remove_columns=pairs.column_names)


@dataclass
class PairCollator:
    """Pads the chosen and the rejected sides of a batch of tokenized pairs separately."""

    tokenizer: object

    def __call__(self, rows):
        batch = {}
        for side in SIDES:
            padded = self.tokenizer.pad([{"input_ids": row[f"{side}_input_ids"]} for row in rows], return_tensors="pt")
            batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = padded["input_ids"], padded["attention_mask"]
            batch[f"{side}_prompt_lengths"] = torch.tensor([row[f"{side}_prompt_lengths"] for row in rows])
        return batch


def pair_representations(model, inputs):
    """(g(x), h(x, y_w), h(x, y_l)) of a batch: read from cached features, computed by the top layers from cached
    states, or by the backbone from tokens (the prompt representation then comes from the chosen response's pass, as
    in the cache)."""
    if "prompt_embedding" in inputs:
        return inputs["prompt_embedding"], inputs["chosen_embedding"], inputs["rejected_embedding"]
    if "states" in inputs:  # cached states entering the top layers (`TopLayersMixture`), one packed row a pair
        return model.embed_pairs(**inputs)
    embeddings = [model.embed(inputs[f"{side}_input_ids"], inputs[f"{side}_attention_mask"],
                              inputs[f"{side}_prompt_lengths"]) for side in SIDES]
    dtype = model.head.experts.weight.dtype
    return embeddings[0][0].to(dtype), embeddings[0][1].to(dtype), embeddings[1][1].to(dtype)


class SMoETrainer(PartLearningRatesMixin, Trainer):
    """A `Trainer` for `SMoERewardModel`s. `train_dataset` holds cached pair features (`EmbeddingCache.pair_features`;
    the default, fast path for a frozen backbone), tokenized pairs (`tokenize_pairs`, with
    `data_collator=PairCollator(tokenizer)`; the end-to-end path), or pairs keyed into a hidden-state cache
    (`mixture_tuning.state_pairs` with its collator, for a `TopLayersMixture`: the top layers train too). Evaluation
    reads cached features, or keyed pairs like training's."""

    def __init__(self, model, args: SMoETrainingArguments, train_dataset=None, eval_dataset=None, **kwargs):
        train_dataset, eval_dataset = trainer_dataset(train_dataset), trainer_dataset(eval_dataset)
        self.lambdas = loss_weights(model.config)
        kwargs.setdefault("compute_metrics", self.set_metrics)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        if model.config.num_experts > 1:
            self.add_callback(RoutingCollapseCallback())
        self._term_sums, self._term_count = defaultdict(float), 0

    def part_learning_rates(self) -> dict:
        """The experts at `learning_rate`, the router at `router_learning_rate` (App. A), the backbone's trained
        layers (if any) at `layers_learning_rate`."""
        return {"backbone": self.args.layers_learning_rate, "experts": self.args.learning_rate,
                "router": self.args.router_learning_rate}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The objective on this process's pairs, its batch-level terms on the global batch (gathered with their
        gradients when several processes train: DDP then averages gradients into exactly one process's)."""
        terms = distributed_objective(*head_outputs_of_batch(model, inputs), self.lambdas)
        for name, value in terms.items():
            if name != "loss":
                self._term_sums[name] += value.item()
        self._term_count += 1
        return (terms["loss"], terms) if return_outputs else terms["loss"]

    def log(self, logs, start_time=None):
        """Adds the mean of each loss term since the last training log."""
        if "loss" in logs and self._term_count:
            logs.update({name: total / self._term_count for name, total in self._term_sums.items()})
            self._term_sums, self._term_count = defaultdict(float), 0
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Routing weights and both sides' expert rewards of a batch, as one (B, 3K) prediction: the Trainer gathers
        them (across processes too) and `behaviour_metrics` computes the paper's set-level metrics, the objective
        included, on the whole evaluation set. No per-batch loss: its mean would differ from the set's."""
        with torch.no_grad():
            outputs = torch.cat(head_outputs_of_batch(model, inputs), dim=-1)
        return None, outputs, torch.zeros(len(outputs), device=outputs.device)

    def set_metrics(self, prediction) -> dict:
        """`compute_metrics`: every loss term, accuracy, routing entropy, global entropy and expert correlation."""
        routing, chosen, rejected = torch.as_tensor(prediction.predictions).float().chunk(3, dim=-1)
        return behaviour_metrics({"routing_weights": routing, "chosen_expert_rewards": chosen,
                                  "rejected_expert_rewards": rejected}, self.lambdas)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """As `Trainer.evaluate`; a dataset given here may be any pair features (their feature columns are read)."""
        return super().evaluate(None if eval_dataset is None else as_training_features(eval_dataset), ignore_keys,
                                metric_key_prefix)


def trainer_dataset(dataset):
    """Cached pair features as the float tensors the trainer reads; tokenized pairs and pairs keyed into a
    hidden-state cache as they are (their collators read them)."""
    if dataset is None or {"chosen_input_ids", "chosen_key"} & set(dataset.column_names):
        return dataset
    return as_training_features(dataset)


def distributed_objective(routing_weights, chosen_rewards, rejected_rewards, lambdas: dict) -> dict:
    """`moe_preference_loss` on this process's pairs, with its batch-level terms (global balance, diversity) on the
    global batch, gathered with gradients when several processes train (the tensors themselves in one process), so
    N processes x batch b optimise what one process x batch N*b does."""
    global_batch = tuple(gather_with_grad(t) for t in (routing_weights, chosen_rewards, rejected_rewards))
    return moe_preference_loss(routing_weights, chosen_rewards, rejected_rewards, **lambdas, global_batch=global_batch)


def head_outputs_of_batch(model, inputs) -> tuple:
    """(routing weights, chosen expert rewards, rejected expert rewards) of a batch. The head runs through the
    model's own forward as the Trainer holds it, so a DDP wrapper synchronises its gradients; the pair's two
    responses go through together and the prompt is routed once."""
    prompt, chosen, rejected = pair_representations(getattr(model, "module", model), inputs)
    output = model(prompt_embeddings=prompt, response_embeddings=torch.stack([chosen, rejected], dim=1))
    return output.routing_weights, output.expert_rewards[:, 0], output.expert_rewards[:, 1]
