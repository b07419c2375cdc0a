"""How every trainer of the family builds its optimizer: the trainable parameters grouped by the part of the model
they belong to (backbone, experts, router), one learning rate per part (App. A trains the experts at 2e-3 and the
router at 5e-4), each part split into parameters with and without weight decay.

`SMoETrainer`, the backbone tuning's `TopLayersTrainer` and TRL's `SMoERewardTrainer` derive from different
`Trainer` classes, so they share this as a mixin over the Trainer's public `create_optimizer` hook; each says only
which learning rate each part takes (`part_learning_rates`).
"""

from ..errors import InputError


def parameter_role(name: str) -> str:
    """`backbone`, `experts` or `router`: the part of a reward model a parameter belongs to, from its name (wrappers
    such as DDP or peft only add prefixes). A head without a router (a single Bradley-Terry head) is one expert."""
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


class PartLearningRatesMixin:
    """Put before the `Trainer` class in a trainer's bases: its optimizer is the class and kwargs
    `TrainingArguments.optim` names (`get_optimizer_cls_and_kwargs`: AdamW by default, with its betas and eps) over
    `optimizer_groups`, at the learning rates `part_learning_rates` returns."""

    def part_learning_rates(self) -> dict:
        """{part: learning rate} for `backbone`, `experts` and `router` (see `parameter_role`)."""
        raise NotImplementedError

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = model or self.model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(optimizer_groups(self, model, self.part_learning_rates()),
                                           **optimizer_kwargs)
        return self.optimizer
