"""The main job end to end: preference data -> embedding cache -> Trainer -> checkpoint + model card (-> Hub)."""

import json
import math
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModel, AutoTokenizer, PrinterCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import SMoERewardModel, __version__
from .backbones import DEFAULT_BACKBONE, backbone_hub_id, loading, resolve_backbone
from .data import load_pairs, split_pairs
from .features import EmbeddingCache, feature_root
from .hub import check_repo_id, push_checkpoint, write_model_card
from .metrics import (category_coverage, expert_category_labels, expert_purity, expert_specialization,
                      expert_specialization_top, pairwise_accuracy)
from .modeling.configuration_smoe import LAMBDA_NAMES, InputError
from .modeling.modeling_smoe import PLAIN_CHAT_TEMPLATE, mixture_reward
from .outputs import check_output_dir, publish, staging_dir, write_text_atomic
from .training import (SMoETrainer, SMoETrainingArguments, as_training_features, behaviour_metrics, head_outputs,
                       loss_weights)


@dataclass
class TrainJob:
    """What `smoe train` does, as data: written next to every result so the run can be repeated exactly."""

    dataset: str
    output_dir: str
    format: str | None = None
    backbone: str = DEFAULT_BACKBONE
    preset: str = "sparse"
    num_experts: int | None = None
    max_pairs: int | None = None
    max_length: int = 1024
    seed: int = 0
    epochs: float = 3.0
    cache_dir: str | None = None
    push_to_hub: str | None = None
    config_overrides: dict = field(default_factory=dict)
    overwrite: bool = False  # replace an earlier hf_smoe output in output_dir (never someone else's files)

    def repeats(self, other: dict) -> bool:
        """Whether `other` (a job's record) is this job, so an interrupted run of it may resume."""
        mine = {key: value for key, value in asdict(self).items() if key != "overwrite"}
        return json.loads(json.dumps(mine, default=str)) == {key: value for key, value in other.items()
                                                              if key != "overwrite"}


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_backbone_model(backbone: str, preset: str, num_experts, seed: int, **config_overrides):
    """A fresh SMoE model and tokenizer around `backbone` (the default alias resolves to the converted SmolLM2)."""
    path = resolve_backbone(backbone)
    with loading("backbone", backbone):
        tokenizer = AutoTokenizer.from_pretrained(path)
        torch.manual_seed(seed)
        model = SMoERewardModel.from_backbone(path, num_experts=num_experts, preset=preset, tokenizer=tokenizer,
                                              **config_overrides)
    return model.to(pick_device()), tokenizer


def has_categories(pairs) -> bool:
    """Whether category recovery can be measured: every pair has a category and there are at least two (with one,
    coverage and purity would be 1.0 whatever the router does)."""
    return "category" in pairs.column_names and None not in pairs["category"] and len(set(pairs["category"])) > 1


def category_metrics(model_head, validation, test) -> dict:
    """Category coverage, expert purity and expert specialization (App. A, Eq. 11-12): experts are labelled on
    validation, measured on test. Also the test accuracy within each category (the paper's Table 9)."""
    names = sorted(set(validation["category"]) | set(test["category"]))
    if len(names) < 2:
        raise InputError(f"category: coverage and purity need at least two categories, the data has {names}.")
    if len(validation) == 0 or len(test) == 0:
        raise InputError("category: experts are labelled on one split and measured on another; both need pairs.")
    codes = {name: i for i, name in enumerate(names)}
    val_categories = torch.tensor([codes[c] for c in validation["category"]])
    test_categories = torch.tensor([codes[c] for c in test["category"]])
    val_routing = head_outputs(model_head, as_training_features(validation))["routing_weights"].cpu()
    test_outputs = {k: v.cpu() for k, v in head_outputs(model_head, as_training_features(test)).items()}
    labels = expert_category_labels(val_routing, val_categories, len(names))
    chosen, rejected = test_outputs["chosen_expert_rewards"], test_outputs["rejected_expert_rewards"]
    return {"category_coverage": category_coverage(labels, len(names)).item(),
            "expert_purity": expert_purity(test_outputs["routing_weights"], test_categories, labels).item(),
            "expert_specialization": expert_specialization(chosen, rejected, test_categories, labels,
                                                           len(names)).item(),
            "expert_specialization_top10": expert_specialization_top(chosen, rejected,
                                                                     test_outputs["routing_weights"]).item(),
            "expert_categories": [names[i] for i in labels.tolist()],
            "accuracy_by_category": accuracy_by_category(test_outputs, test_categories, names)}


def accuracy_by_category(outputs: dict, categories: torch.Tensor, names: list) -> dict:
    """Pairwise accuracy of the mixture reward within each category present."""
    chosen, rejected = (mixture_reward(outputs["routing_weights"], outputs[f"{side}_expert_rewards"]).squeeze(-1)
                        for side in ("chosen", "rejected"))
    return {name: pairwise_accuracy(chosen[categories == code], rejected[categories == code]).item()
            for code, name in enumerate(names) if (categories == code).any()}


def evaluate_head(model, features) -> dict:
    """Test metrics of a trained head, with category recovery when the data has categories."""
    test = as_training_features(features["test"])
    metrics = behaviour_metrics(head_outputs(model.head, test), loss_weights(model.config))
    if has_categories(features["test"]):
        metrics.update(category_metrics(model.head, features["validation"], features["test"]))
    return metrics


def split_for_training(pairs, seed: int, group_by: str = "prompt", **fractions):
    """Train/validation/test split by prompt (no prompt in two splits); every split must hold pairs. `fractions`:
    `validation` and `test` shares (default 0.1 each, see `split_pairs`)."""
    splits = split_pairs(pairs, seed=seed, group_by=group_by, **fractions)
    empty = [name for name, split in splits.items() if len(split) == 0]
    if empty:
        raise InputError(f"dataset: {len(pairs)} pairs leave the {', '.join(empty)} split(s) empty (10% of each "
                         "category's prompts, rounded); use more pairs or prompts.")
    return splits


def load_frozen_backbone(backbone: str = DEFAULT_BACKBONE):
    """The backbone and its tokenizer, loaded once and shared by every head trained on its features."""
    path = resolve_backbone(backbone)
    with loading("backbone", backbone):
        return AutoModel.from_pretrained(path).to(pick_device()), AutoTokenizer.from_pretrained(path)


def cached_features(backbone, tokenizer, splits: dict, *, cache_dir=None, max_length: int = 1024) -> dict:
    """Pair features of every split, from the embedding cache (computed once per text; the head's size and preset
    do not enter the features)."""
    model = SMoERewardModel.from_backbone(backbone, tokenizer=tokenizer, preset="single")
    cache = EmbeddingCache(model, tokenizer, cache_dir=cache_dir, max_length=max_length)
    return {name: cache.pair_features(split) for name, split in splits.items()}


def train_preset(backbone, tokenizer, features, preset: str, num_experts: int, seed: int, epochs: float,
                 output_dir: str, **config_overrides):
    """A fresh head of `preset` (K = 1 for `single`) trained on cached features; returns (model, test metrics)."""
    torch.manual_seed(seed)
    model = SMoERewardModel.from_backbone(backbone, tokenizer=tokenizer, preset=preset,
                                          num_experts=None if preset == "single" else num_experts, **config_overrides)
    train_head(model, features, output_dir, seed, epochs)
    return model, evaluate_head(model, features)


def train_head(model, features, output_dir: str, seed: int, epochs: float, resume: bool = False,
               **argument_overrides):
    """Trains `model`'s head on cached train features, evaluating on validation each epoch. With `resume` (and a
    `save_strategy` in `argument_overrides`) it continues from the last complete Trainer checkpoint in `output_dir`,
    ending bit-identical to an uninterrupted run."""
    check_epochs(epochs)
    args = SMoETrainingArguments(output_dir=output_dir, seed=seed, num_train_epochs=epochs,
                                 disable_tqdm=True, **argument_overrides)
    trainer = SMoETrainer(model, args, train_dataset=features["train"], eval_dataset=features["validation"])
    trainer.remove_callback(PrinterCallback)  # every term stays in trainer.state.log_history; the caller summarises
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(output_dir) if resume else None)
    check_finite_head(model)
    return trainer


def check_epochs(epochs) -> None:
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise InputError(f"epochs: must be a number > 0, got {epochs!r}; 0 epochs would save an untrained head.")


def last_complete_checkpoint(folder) -> str | None:
    """The newest Trainer checkpoint in `folder` that was written to the end (its trainer_state.json is written
    last), after removing any a kill cut short; None when there is none."""
    folder = Path(folder)
    complete = None
    if not folder.is_dir():
        return None
    for checkpoint in sorted(folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.split("-")[-1])):
        if (checkpoint / TRAINER_STATE_NAME).is_file():
            complete = checkpoint
        else:
            shutil.rmtree(checkpoint)
    return str(complete) if complete else None


def check_finite_head(model) -> None:
    """A head whose weights hold NaN or inf scores nothing: refused before it can be saved."""
    broken = [name for name, parameter in model.head.named_parameters() if not torch.isfinite(parameter).all()]
    if broken:
        weights = ", ".join(f"{name}={model.config.to_dict()[name]}" for name in LAMBDA_NAMES)
        raise InputError(f"training diverged: the head's weights {broken[:3]} hold NaN or inf (loss weights "
                         f"{weights}); lower the loss weights or the learning rate. Nothing was saved.")


def save_checkpoint(model, tokenizer, output_dir) -> None:
    """The full model and its tokenizer; a tokenizer without a chat template gets the plain fallback written into
    it, so `apply_chat_template` (the model card's snippet) reproduces the training encoding."""
    model.save_pretrained(output_dir)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    tokenizer.save_pretrained(output_dir)


def run_command() -> str:
    """The command line that started this process, as the user typed it (`smoe ...` for the console script)."""
    program = "smoe" if Path(sys.argv[0]).name == "smoe" else sys.argv[0]
    return " ".join([program, *sys.argv[1:]])


def save_run(output_dir: Path, job, results, filename: str = "results.json") -> None:
    """The exact command, the job and the environment beside the results (`output_dir/filename`)."""
    record = {"command": run_command(), "job": job if isinstance(job, dict) else asdict(job),
              "versions": {"hf_smoe": __version__, "transformers": transformers.__version__,
                           "torch": torch.__version__, "python": platform.python_version()},
              "results": results}
    write_text_atomic(output_dir / filename, json.dumps(record, indent=2, default=str))


def check_job(job: TrainJob) -> Path:
    """Every argument of `job` that can be checked before data or models load; returns the output folder."""
    check_epochs(job.epochs)
    for name in ("max_pairs", "max_length", "num_experts"):
        value = getattr(job, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name}: must be an integer >= 1, got {value!r}.")
    if job.push_to_hub:
        check_repo_id(job.push_to_hub)
    feature_root(job.cache_dir)
    protected = {name: path for name, path in (("backbone", job.backbone), ("dataset", job.dataset),
                                               ("embedding cache", job.cache_dir))
                 if path and Path(path).exists()}
    return check_output_dir(job.output_dir, overwrite=job.overwrite, protected=protected)


def staging_for(job: TrainJob, output_dir: Path) -> Path:
    """The job's staging folder. An interrupted run of the same job resumes in it; one of another job is replaced
    when it holds no finished epoch (nothing to lose: features live in the cache), and otherwise kept unless
    `overwrite`."""
    staging = staging_dir(output_dir)
    record = staging / "job.json"
    if staging.exists():
        recorded = json.loads(record.read_text()) if record.is_file() else {}
        if job.repeats(recorded):
            print(f"Resuming the interrupted run in {staging}")
            return staging
        if last_complete_checkpoint(staging / "trainer") is not None and not job.overwrite:
            mine = json.loads(json.dumps(asdict(job), default=str))
            changed = sorted(key for key in mine if key != "overwrite" and recorded.get(key) != mine[key])
            raise InputError(f"output_dir: {staging} holds an interrupted run of a different job (it differs in "
                             f"{', '.join(changed)}); rerun that job's command to resume it, or pass --overwrite to "
                             "discard it.")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    write_text_atomic(record, json.dumps(asdict(job), default=str))
    return staging


def train_reward_model(job: TrainJob) -> dict:
    """Runs the main job and returns the test metrics; see `smoe train --help`. Everything is written to a staging
    folder and renamed into `job.output_dir` when complete; a killed run resumes from its last epoch."""
    output_dir = check_job(job)
    pairs = load_pairs(job.dataset, job.format, max_pairs=job.max_pairs, seed=job.seed)
    splits = split_for_training(pairs, job.seed)
    model, tokenizer = load_backbone_model(job.backbone, job.preset, job.num_experts, job.seed,
                                           **job.config_overrides)
    staging = staging_for(job, output_dir)
    cache = EmbeddingCache(model, tokenizer, cache_dir=job.cache_dir, max_length=job.max_length)
    features = {name: cache.pair_features(split) for name, split in splits.items()}
    train_head(model, features, str(staging / "trainer"), job.seed, job.epochs, resume=True,
               save_strategy="epoch", save_total_limit=1)
    results = evaluate_head(model, features)
    shutil.rmtree(staging / "trainer")  # Trainer checkpoints only serve resuming
    save_checkpoint(model, tokenizer, staging)
    routing_keys = ("routing_entropy", "global_entropy", "expert_correlation")
    write_model_card(staging, base_model=backbone_hub_id(job.backbone), datasets=[job.dataset],
                     eval_results={"accuracy": results["accuracy"]},
                     routing_stats={key: results[key] for key in routing_keys}, dataset_name=job.dataset,
                     repo_id=job.push_to_hub)
    save_run(staging, job, results)
    publish(staging, output_dir)  # job.json stays until here: a kill inside publish still resumes
    (output_dir / "job.json").unlink()
    if job.push_to_hub:
        results["pushed"] = push_checkpoint(output_dir, job.push_to_hub)
    return results
