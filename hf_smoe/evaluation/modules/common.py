"""The one factory every `evaluate` wrapper is built with, and what the wrappers share: the citation, the input
feature types and the conversion of `evaluate`'s columns to tensors.

A wrapper file defines one `evaluate.Metric` subclass at module level (evaluate loads the first one it finds there)
whose base `metric_base` builds from three things: the `hf_smoe.metrics` function, its input features and its
description. The files import this module absolutely: evaluate copies each file into its own cache and imports it
from there, outside this package.
"""

import datasets
import evaluate
import numpy as np
import torch

CITATION = """@article{sparse_moe_reward_models,
  title={Sparse Mixture-of-Experts Reward Models Learn Interpretable and Specialized Experts for Personalized
         Preference Modeling}
}"""

FLOAT = datasets.Value("float32")
INT = datasets.Value("int64")
VECTOR = datasets.Sequence(datasets.Value("float32"))

# Inputs several metrics share, with their `Args:` lines.
ROUTING_ARGUMENT = "    routing_weights (list of float, length K): router distribution pi(x) of each example."
EXPERT_REWARDS = {"chosen_expert_rewards": VECTOR, "rejected_expert_rewards": VECTOR}
EXPERT_REWARD_ARGUMENTS = """
    chosen_expert_rewards (list of float, length K): each expert's reward of the chosen response.
    rejected_expert_rewards (list of float, length K): each expert's reward of the rejected response."""
STEERING_INPUTS = {"base_margins": FLOAT, "steered_margins": VECTOR, "attributes": INT}

EXAMPLE = """Example:
    >>> import evaluate
    >>> from hf_smoe.evaluation.modules import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("{name}"))
"""


def as_tensor(values, dtype=None) -> torch.Tensor:
    """A column from `evaluate` (list of numbers, or of equal-length sequences) as a tensor."""
    array = np.asarray(values)
    if array.dtype == object:  # a column of equal-length sequences
        array = np.stack([np.asarray(v) for v in values])
    return torch.as_tensor(array, dtype=dtype)


def steering_arguments(base_reading: str) -> str:
    """The `Args:` lines of the flip rates; `base_reading` says how a base margin is read (e.g. "<= 0 is wrong")."""
    return f"""
    base_margins (float): r(x, y+) - r(x, y-) at w=0 for the attribute's preferred response y+ ({base_reading}).
    steered_margins (list of float, length W): the same margin at each target weight w.
    attributes (int): attribute id of each pair (0 everywhere for one attribute)."""


def weights_first(flip_function):
    """A flip rate of `hf_smoe.metrics` over `evaluate`'s rows: each pair's row holds its W steered margins, while
    the function takes them as (W, N), one row per target weight."""
    def over_rows(base_margins, steered_margins, attributes):
        return flip_function(base_margins, steered_margins.T, attributes)
    return over_rows


def metric_base(name: str, compute, features: dict, *, description: str, arguments: str, returns: str | None = None,
                configs: dict | None = None) -> type:
    """The base class of the `evaluate` module `name`.

    Args:
        compute: the metric; called with every input column as a tensor (`INT` columns as int64) and the caller's
            other keyword arguments as given. It returns a tensor, reported as `{name: value}`, or a dict of results.
        features: the input columns and their types (`FLOAT`, `INT`, `VECTOR`).
        description: what the metric measures, with the paper's equation.
        arguments: the `Args:` lines of the inputs description (column and keyword arguments).
        returns: the `Returns:` line (default `{'name': float}`).
        configs: further configurations, `{config name: (compute, features)}`; `default` is always
            (`compute`, `features`). Without any, every config name means the default (as `evaluate` allows).
    """
    description = " ".join(description.split())  # a wrapper's docstring, as one line
    arguments, returns = arguments.strip("\n"), returns or f"{{{name!r}: float}}"
    inputs_description = f"\nArgs:\n{arguments}\nReturns:\n    {returns}\n{EXAMPLE.format(name=name)}"
    configurations = {"default": (compute, features), **(configs or {})}

    class MetricBase(evaluate.Metric):
        def _configuration(self) -> tuple:
            if configs is None:
                return configurations["default"]
            if self.config_name not in configurations:
                raise KeyError(f"config must be one of {sorted(configurations)}, got {self.config_name!r}")
            return configurations[self.config_name]

        def _info(self):
            return evaluate.MetricInfo(description=description, citation=CITATION,
                                       inputs_description=inputs_description,
                                       features=datasets.Features(self._configuration()[1]))

        def _compute(self, **inputs):
            function, columns = self._configuration()
            value = function(**{key: as_tensor(value, torch.long if columns[key] == INT else None)
                                if key in columns else value for key, value in inputs.items()})
            return value if isinstance(value, dict) else {name: value.item()}

    MetricBase.__doc__ = description + "\n" + inputs_description
    return MetricBase
