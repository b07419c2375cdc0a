"""The preference data of the reproductions: where it lives, the mixtures built from it, and how it is split.

Table 1 and Table 8 read three datasets whose latent category is known and never shown to the model: HH-RLHF
helpful + harmless (two annotator populations whose preferences conflict), DSP with the domain's criterion appended
to the prompt, and the embedded synthetic demo set. The personalization and interpretability experiments train on a
general mixture (HH + WebGPT) and measure on DSP without the criterion.
"""

import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

from datasets import concatenate_datasets

from ..data import generate_preference_set, load_pairs
from ..errors import InputError
from ..training import cached_features, split_for_training

DATA_ROOT_VARIABLE = "HF_SMOE_DATA"  # the data folder of the reproductions when --data-root is not given
# Labelling experts on the 50 top validation examples and measuring purity on the 50 top test examples (App. A)
# needs >= 50 examples of each category in both splits, so the reproductions hold out 20% + 20% of prompts.
SPLIT_FRACTIONS = {"validation": 0.2, "test": 0.2}
GENERAL_SIZES = (700, 300)  # HH pairs per subset and WebGPT pairs of the general mixture


@dataclass
class ReproductionData:
    """Where a reproduction's pairs come from and how they are read.

    Args:
        name: short name used in file names and tables.
        description: one line for the results table.
        num_experts: K; the paper's rule for SHP (4 categories, K = 5) is one expert more than categories.
        max_length: truncation length of prompt + response (what bounds the cost of embedding on a CPU).
        group_by: the column whose values never straddle two splits.
        size: HH pairs per subset / DSP queries / demo prompts; chosen so the cold embedding fits a CPU run.
    """

    name: str
    description: str
    num_experts: int
    max_length: int
    group_by: str
    size: int


DATASETS = {
    "hh": ReproductionData("hh", "HH-RLHF helpful + harmless test files; category = subset", 3, 256, "prompt", 700),
    "dsp": ReproductionData("dsp", "DSP with the domain's criterion appended; category = domain", 5, 256, "query",
                            150),
    "demo": ReproductionData("demo", "hf_smoe synthetic demo set; category = prompt topic", 5, 1024, "prompt", 360),
}
DSP_QUERIES = DATASETS["dsp"].size  # the DSP queries sampled for the experiments that adapt or steer on DSP
DSP_MAX_LENGTH = DATASETS["dsp"].max_length  # HH and DSP share it, so the general mixture's features reuse theirs


def reproduction_data(name: str, size: int | None = None, **changes) -> ReproductionData:
    """`DATASETS[name]`, with another size when one is given (`--size`) and any other field `changes`."""
    return replace(DATASETS[name], **({"size": size} if size else {}), **changes)


def resolve_data_root(data_root=None) -> Path:
    """The folder holding the reproductions' public data (`hh-rlhf/`, `dsp/`, `webgpt/`, see the shared data
    README): `data_root` (`--data-root`), else `$HF_SMOE_DATA`. The package carries no default: where the data lives
    is the user's to say."""
    root = data_root or os.environ.get(DATA_ROOT_VARIABLE)
    if not root:
        raise InputError(f"data_root: the reproductions read HH-RLHF, DSP and WebGPT from a folder; pass --data-root "
                         f"DIR or set {DATA_ROOT_VARIABLE}=DIR (the folder holding hh-rlhf/, dsp/ and webgpt/).")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"data_root: no such folder {root}; pass --data-root DIR or set {DATA_ROOT_VARIABLE}=DIR.")
    return root


def hh_mixture(size: int | None, seed: int = 0, data_root=None):
    """`size` random pairs (None: all) from each of HH helpful-base and harmless-base, with the subset as
    category."""
    data_root = resolve_data_root(data_root)
    subsets = [load_pairs(data_root / "hh-rlhf" / f"{subset}-base.test.jsonl.gz", "hh-rlhf", max_pairs=size,
                          seed=seed, category=subset) for subset in ("helpful", "harmless")]
    return concatenate_datasets(subsets)


def dsp_file(data_root=None) -> Path:
    return resolve_data_root(data_root) / "dsp" / "domain_specific_preference.test.json"


def dsp_queries_by_pair(data_root=None) -> list:
    """The bare query (the prompt without the criterion) of every DSP pair, in file order."""
    prompts = load_pairs(dsp_file(data_root), "dsp", append_criterion=False)["prompt"]
    return [prompt[-1]["content"] for prompt in prompts]


def dsp_with_criterion(size: int | None, seed: int = 0, data_root=None):
    """Every pair of `size` random DSP queries (None: all), criterion appended, plus a `query` column (the prompt
    without the criterion) so that a query's four domains stay in one split."""
    queries = dsp_queries_by_pair(data_root)
    kept = set(queries) if size is None else set(random.Random(seed).sample(sorted(set(queries)), size))
    pairs = load_pairs(dsp_file(data_root), "dsp").select([row for row, query in enumerate(queries) if query in kept])
    return pairs.add_column("query", [query for query in queries if query in kept])


def without_criterion(pairs):
    """DSP pairs as they come at test time in §5.2: the prompt is the bare query, the criterion removed."""
    return pairs.map(lambda pair: {"prompt": [{"role": "user", "content": pair["query"]}]})


def general_mixture(hh_size: int | None = GENERAL_SIZES[0], webgpt_size: int | None = GENERAL_SIZES[1], seed: int = 0,
                    data_root=None):
    """The personalization experiments' general training data (Table 5): HH helpful + harmless and WebGPT, each pair
    with its source as category (never an input). A size of None takes every pair."""
    data_root = resolve_data_root(data_root)
    webgpt = load_pairs(data_root / "webgpt" / "webgpt.test.json", "webgpt", max_pairs=webgpt_size, seed=seed,
                        category="webgpt")
    return concatenate_datasets([hh_mixture(hh_size, seed, data_root), webgpt])


def load_reproduction_pairs(data: ReproductionData, seed: int = 0, data_root=None):
    if data.name == "hh":
        return hh_mixture(data.size, seed, data_root)
    if data.name == "dsp":
        return dsp_with_criterion(data.size, seed, data_root)
    return generate_preference_set(num_prompts=data.size, seed=seed)


def reproduction_splits(data: ReproductionData, data_root=None) -> dict:
    """The dataset's pairs split by `group_by` (seed 0: the split is fixed across seeds, so the spread over seeds
    is the training's)."""
    pairs = load_reproduction_pairs(data, 0, data_root)
    return split_for_training(pairs, 0, group_by=data.group_by, **SPLIT_FRACTIONS)


def prepare(data: ReproductionData, backbone, tokenizer, *, cache_dir=None, data_root=None):
    """`reproduction_splits` and the cached features of each split."""
    splits = reproduction_splits(data, data_root)
    return splits, cached_features(backbone, tokenizer, splits, cache_dir=cache_dir, max_length=data.max_length)


def general_splits(data_root=None, sizes: tuple = GENERAL_SIZES) -> dict:
    """The general mixture (`general_mixture(*sizes)`) split by prompt 80/10/10, seed 0."""
    return split_for_training(general_mixture(*sizes, data_root=data_root), 0)


def general_data(backbone, tokenizer, *, cache_dir=None, data_root=None, sizes: tuple = GENERAL_SIZES):
    """(splits, features) of the general mixture (`general_splits`): the paper's real-world setting for
    personalization and interpretability (§6), with the cached features HH shares with DSP."""
    splits = general_splits(data_root, sizes)
    return splits, cached_features(backbone, tokenizer, splits, cache_dir=cache_dir, max_length=DSP_MAX_LENGTH)


def dsp_targets(dsp_queries: int, data_root=None) -> dict:
    """DSP pairs without the criterion, split by query (Table 1's split): `pool` (train + validation queries: what
    adaptation draws from) and `test`."""
    dsp = without_criterion(dsp_with_criterion(dsp_queries, 0, data_root))
    splits = split_for_training(dsp, 0, group_by="query", **SPLIT_FRACTIONS)
    return {"pool": concatenate_datasets([splits["train"], splits["validation"]]), "test": splits["test"]}
