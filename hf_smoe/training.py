"""Training the router and experts on cached backbone features with a `transformers.Trainer`.

The backbone is frozen, so an epoch needs only the three cached vectors of each pair: the prompt representation
and the two response representations. `SMoETrainer` computes the paper's objective (Eq. 7, with the preset's
weights from the model config) on them, logs every loss term, evaluates the paper's model-behaviour metrics and
saves the *full* model, so the checkpoint loads with `AutoModel.from_pretrained`.
"""

import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .distributed import gather_with_grad, launched_processes
from .encoding import encode_pair
from .evaluation import behaviour_metrics
from .features import as_training_features
from .losses import loss_weights, moe_preference_loss
from .metrics import COLLAPSED_BELOW_GLOBAL_ENTROPY
from .modeling.configuration_smoe import InputError

SIDES = ("chosen", "rejected")


@dataclass
class SMoETrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's defaults (App. A): AdamW, lr 2e-3 for the experts and 5e-4 for the
    router, 5% linear warmup, batch 16, 3 epochs, evaluation every epoch.

    Args:
        router_learning_rate (`float`, defaults to 5e-4): learning rate of the router (`learning_rate` is the
            experts').
        collapse_global_entropy (`float`, defaults to 0.5): an evaluation whose global entropy falls below this
            warns that routing has collapsed onto few experts (SPEC 7: healthy routing has high global entropy).
        overwrite_output_dir (`bool`, defaults to False): `smoe train` replaces an earlier hf_smoe output in
            `output_dir` only with it (`--overwrite`), and never a folder of files hf_smoe did not write.
    """

    learning_rate: float = 2e-3
    optim: str = "adamw_torch"  # the paper's AdamW, unfused: the optimizer every reported result was trained with
    router_learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of the router."})
    warmup_steps: float = 0.05
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 1024
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (App. A: 3).", "aliases": ["--epochs"]})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace an earlier hf_smoe output in output_dir (never files hf_smoe did not write).",
        "aliases": ["--overwrite"]})
    eval_strategy: str = "epoch"
    save_strategy: str = "no"
    logging_steps: float = 10
    remove_unused_columns: bool = False
    dataloader_pin_memory: bool = False  # batches are a few small vectors
    ddp_find_unused_parameters: bool = False  # the frozen backbone holds no trainable parameter; the head uses all
    collapse_global_entropy: float = field(default=COLLAPSED_BELOW_GLOBAL_ENTROPY,
                                           metadata={"help": "Warn below this global entropy."})

    def __post_init__(self):
        if launched_processes() > 1 and not torch.cuda.is_available():
            self.use_cpu = True  # processes on a CPU-only machine train with DDP over gloo, not as N separate runs
        super().__post_init__()


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
    """(g(x), h(x, y_w), h(x, y_l)) of a batch: read from cached features, or computed by the backbone from tokens
    (the prompt representation then comes from the chosen response's pass, as in the cache)."""
    if "prompt_embedding" in inputs:
        return inputs["prompt_embedding"], inputs["chosen_embedding"], inputs["rejected_embedding"]
    embeddings = [model.embed(inputs[f"{side}_input_ids"], inputs[f"{side}_attention_mask"],
                              inputs[f"{side}_prompt_lengths"]) for side in SIDES]
    dtype = model.head.experts.weight.dtype
    return embeddings[0][0].to(dtype), embeddings[0][1].to(dtype), embeddings[1][1].to(dtype)


class SMoETrainer(Trainer):
    """A `Trainer` for `SMoERewardModel`s. `train_dataset` holds cached pair features (`EmbeddingCache.pair_features`;
    the default, fast path for a frozen backbone) or tokenized pairs (`tokenize_pairs`, with
    `data_collator=PairCollator(tokenizer)`; the end-to-end path). Evaluation always reads cached features."""

    def __init__(self, model, args: SMoETrainingArguments, train_dataset=None, eval_dataset=None, **kwargs):
        if train_dataset is not None and "chosen_input_ids" not in train_dataset.column_names:
            train_dataset = as_training_features(train_dataset)
        eval_dataset = None if eval_dataset is None else as_training_features(eval_dataset)
        self.lambdas = loss_weights(model.config)
        kwargs.setdefault("compute_metrics", self.set_metrics)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        if model.config.num_experts > 1:
            self.add_callback(RoutingCollapseCallback())
        self._term_sums, self._term_count = defaultdict(float), 0

    def create_optimizer(self, model=None):
        """The optimizer `TrainingArguments.optim` names (`get_optimizer_cls_and_kwargs`: AdamW by default, with
        its betas and eps), with the experts at `learning_rate` and the router at `router_learning_rate` (App. A)."""
        if self.optimizer is None:
            model = model or self.model
            rates = {"backbone": self.args.learning_rate, "experts": self.args.learning_rate,
                     "router": self.args.router_learning_rate}
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(optimizer_groups(self, model, rates), **optimizer_kwargs)
        return self.optimizer

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


def distributed_objective(routing_weights, chosen_rewards, rejected_rewards, lambdas: dict) -> dict:
    """`moe_preference_loss` on this process's pairs, with its batch-level terms (global balance, diversity) on the
    global batch, gathered with gradients when several processes train (the tensors themselves in one process), so
    N processes x batch b optimise what one process x batch N*b does."""
    global_batch = tuple(gather_with_grad(t) for t in (routing_weights, chosen_rewards, rejected_rewards))
    return moe_preference_loss(routing_weights, chosen_rewards, rejected_rewards, **lambdas, global_batch=global_batch)


def parameter_role(name: str) -> str:
    """`backbone`, `experts` or `router`: the part of an `SMoERewardModel` a parameter belongs to, from its name
    (wrappers such as DDP or peft only add prefixes)."""
    parts = name.split(".")
    for part in parts:
        if part == "backbone":
            return "backbone"
        if part == "head":
            return "router" if "router" in parts else "experts"
    raise InputError(f"model: parameter {name!r} is neither in the backbone nor in the head; train an "
                     "SMoERewardModel.")


def optimizer_groups(trainer, model, learning_rates: dict) -> list:
    """The trainable parameters of `model` in groups: one learning rate per part (`learning_rates`, keyed by
    `parameter_role`), each split into weights with `weight_decay` and biases, norms and a static router's logits
    without."""
    decayed = {name for name in trainer.get_decay_parameter_names(model) if not name.endswith("logits")}
    groups = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((parameter_role(name), name in decayed), []).append(parameter)
    return [{"params": params, "lr": learning_rates[role], "weight_decay": trainer.args.weight_decay if decay else 0.0}
            for (role, decay), params in groups.items()]


def head_outputs_of_batch(model, inputs) -> tuple:
    """(routing weights, chosen expert rewards, rejected expert rewards) of a batch. The head runs through the
    model's own forward as the Trainer holds it, so a DDP wrapper synchronises its gradients; the pair's two
    responses go through together and the prompt is routed once."""
    prompt, chosen, rejected = pair_representations(getattr(model, "module", model), inputs)
    output = model(prompt_embeddings=prompt, response_embeddings=torch.stack([chosen, rejected], dim=1))
    return output.routing_weights, output.expert_rewards[:, 0], output.expert_rewards[:, 1]


class RoutingCollapseCallback(TrainerCallback):
    """Warns when an evaluation's global entropy falls below `args.collapse_global_entropy`: most prompts go to the
    same few experts (SPEC 7: healthy routing has high global entropy)."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        entropy = (metrics or {}).get("eval_global_entropy")
        if entropy is not None and entropy < args.collapse_global_entropy:
            warnings.warn(f"Routing collapse: global entropy {entropy:.3f} < {args.collapse_global_entropy}: most "
                          "prompts go to the same few experts. Raise lambda_global or check the router learning "
                          "rate.", stacklevel=2)
