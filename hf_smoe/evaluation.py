"""`smoe eval`: every paper metric the data allows, for a saved checkpoint, computed on cached features."""

import json
import warnings
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoTokenizer

from .backbones import check_model_source, loading
from .data import load_pairs, split_pairs
from .features import EmbeddingCache
from .modeling.configuration_smoe import InputError, SMoERewardConfig
from .distributed import pick_device
from .pipeline import category_metrics, has_categories, non_finite_parameters, save_run
from .training import as_training_features, behaviour_metrics, head_outputs, loss_weights


def load_checkpoint(checkpoint):
    """(model in eval mode on the best device, tokenizer) of an hf_smoe checkpoint folder or Hub id. A foreign
    checkpoint is refused from its config, before any weights load; a damaged one (unreadable, or weights that are
    not finite numbers) is refused before it can score anything."""
    source = check_model_source("checkpoint", checkpoint)
    with loading("checkpoint", checkpoint):
        config = AutoConfig.from_pretrained(source)
        if config.model_type != SMoERewardConfig.model_type:
            raise InputError(f"checkpoint: {checkpoint} is not an hf_smoe reward model (model_type "
                             f"{config.model_type!r}); train one with `smoe train`.")
        model = AutoModel.from_pretrained(source, config=config).to(pick_device()).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
    broken = non_finite_parameters(model)
    if broken:
        raise InputError(f"checkpoint: {checkpoint} holds NaN or infinite weights ({', '.join(broken[:3])}"
                         f"{', ...' if len(broken) > 3 else ''}); the file is damaged or its training diverged: "
                         "restore or retrain it.")
    return model, tokenizer


def evaluate_checkpoint(checkpoint, dataset, *, format=None, split="test", max_pairs=None, seed=0, cache_dir=None,
                        max_length=1024) -> dict:
    """Accuracy, loss terms, routing entropy, global entropy and expert correlation on all pairs; with categories,
    also coverage, purity and specialization, labelling experts on half of the prompts and measuring on the other
    half (the paper labels on validation and measures on test; one dataset is split by prompt, seeded)."""
    model, tokenizer = load_checkpoint(checkpoint)
    pairs = load_pairs(dataset, format, split=split, max_pairs=max_pairs, seed=seed)
    cache = EmbeddingCache(model, tokenizer, cache_dir=cache_dir, max_length=max_length)
    features = cache.pair_features(pairs)
    results = behaviour_metrics(head_outputs(model.head, as_training_features(features)), loss_weights(model.config))
    results["pairs"] = len(pairs)
    if has_categories(pairs):
        labelling, measuring = prompt_halves(features, pairs, seed)
        if len(labelling) and len(measuring):
            results.update(category_metrics(model.head, labelling, measuring))
        else:
            warnings.warn(f"category metrics left out: the {len(pairs)} pairs do not split by prompt into a half "
                          "that labels the experts and a half that measures them; give more prompts.", stacklevel=2)
    return results


def prompt_halves(features, pairs, seed: int = 0) -> tuple:
    """(labelling, measuring): `features` with the pairs' `prompt` column, split by prompt into two seeded halves.
    One dataset stands in for the paper's validation split (experts are labelled or described on it) and test split
    (they are measured on it); no prompt is in both."""
    halves = split_pairs(features.add_column("prompt", list(pairs["prompt"])), seed=seed, validation=0.0, test=0.5,
                         group_by="prompt")
    return halves["train"], halves["test"]


def write_evaluation(results: dict, output, job: dict) -> Path:
    """The results with the exact command, the job (checkpoint, data, seed, ...) and the versions (`save_run`)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_run(output.parent, job, results, output.name)
    return output


def is_evaluation_file(path: Path) -> bool:
    """A JSON file `write_evaluation` wrote (so `smoe eval --overwrite` may replace it)."""
    try:
        return "accuracy" in json.loads(path.read_text())["results"]
    except (OSError, ValueError, TypeError, KeyError):
        return False
