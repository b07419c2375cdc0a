"""What every `evaluate` wrapper shares: the citation, input feature types and list-to-tensor conversion."""

import datasets
import numpy as np
import torch

CITATION = """@article{sparse_moe_reward_models,
  title={Sparse Mixture-of-Experts Reward Models Learn Interpretable and Specialized Experts for Personalized
         Preference Modeling}
}"""

FLOAT = datasets.Value("float32")
INT = datasets.Value("int64")
VECTOR = datasets.Sequence(datasets.Value("float32"))


def as_tensor(values, dtype=None) -> torch.Tensor:
    """A column from `evaluate` (list of numbers, or of equal-length sequences) as a tensor."""
    array = np.asarray(values)
    if array.dtype == object:  # a column of equal-length sequences
        array = np.stack([np.asarray(v) for v in values])
    return torch.as_tensor(array, dtype=dtype)
