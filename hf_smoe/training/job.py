"""The training job (`smoe train`) end to end: preference data -> embedding cache -> `SMoETrainer` -> checkpoint +
model card (-> Hub), through a resumable staging folder; and the helpers other commands train heads with
(`train_preset`, `train_head`, `run_trainer`)."""

import contextlib
import copy
import dataclasses
import functools
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import PrinterCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data import load_pairs, split_pairs
from ..errors import InputError
from ..evaluation import evaluate_head
from ..features import EmbeddingCache, feature_root
from ..hub import check_repo_id, is_hub_id, push_checkpoint, write_model_card
from ..modeling.configuration_smoe import LAMBDA_NAMES, PRESETS, SMoERewardConfig, check_loss_weights
from ..modeling.modeling_smoe import PLAIN_CHAT_TEMPLATE, SMoERewardModel
from ..runtime import (backbone_hub_id, check_output_dir, load_backbone_model, non_finite_parameters, publish,
                       resolve_backbone, save_run, staging_dir, state, write_text_atomic)
from ..runtime.loading import BACKBONE_DIGEST, weights_digest
from .arguments import DataArguments, ModelArguments, SMoETrainingArguments
from .mixture_tuning import (MixtureStatesCollator, cached_state_sets, finish_top_layers, prepare_top_layers,
                             tuned_pair_features)
from .trainer import SMoETrainer


def job_record(data: DataArguments, model: ModelArguments, training) -> dict:
    """The three argument sets of a run, JSON-ready: written beside its results, and compared to resume it."""
    training_record = {key: value for key, value in training.to_dict().items()
                       if key not in ("output_dir", "logging_dir", "overwrite_output_dir", "resume_from_checkpoint")}
    return json.loads(json.dumps({"data": asdict(data), "model": asdict(model), "training": training_record},
                                 default=str))


def split_for_training(pairs, seed: int, group_by: str = "prompt", **fractions):
    """Train/validation/test split by prompt (no prompt in two splits); every split must hold pairs. `fractions`:
    `validation` and `test` shares (default 0.1 each, see `split_pairs`)."""
    splits = split_pairs(pairs, seed=seed, group_by=group_by, **fractions)
    empty = [name for name, split in splits.items() if len(split) == 0]
    if empty:
        raise InputError(f"dataset: {len(pairs)} pairs leave the {', '.join(empty)} split(s) empty (10% of each "
                         "category's prompts, rounded); use more pairs or prompts.")
    return splits


def cached_features(backbone, tokenizer, splits: dict, *, cache_dir=None, max_length: int = 1024) -> dict:
    """Pair features of every split, from the embedding cache (computed once per text; the head's size and preset
    do not enter the features)."""
    model = SMoERewardModel.from_backbone(backbone, tokenizer=tokenizer, preset="single")
    cache = EmbeddingCache(model, tokenizer, cache_dir=cache_dir, max_length=max_length)
    return {name: cache.pair_features(split) for name, split in splits.items()}


def train_preset(backbone, tokenizer, features, preset: str, num_experts: int, seed: int, epochs: float,
                 output_dir: str, training: dict | None = None, **config_overrides):
    """A fresh head of `preset` (K = 1 for `single`) trained on cached features; returns (model, test metrics).
    `training`: `SMoETrainingArguments` fields to change (`smoe demo` / `smoe reproduce` flags)."""
    model = fresh_model(backbone, tokenizer, preset, num_experts, seed, **config_overrides)
    train_head(model, features, output_dir, seed, epochs, **(training or {}))
    return model, evaluate_head(model, features)


def fresh_model(backbone, tokenizer, preset: str, num_experts: int, seed: int, **config_overrides):
    """A new model of `preset` around `backbone`, its head drawn from `seed` (K = 1 for `single`)."""
    torch.manual_seed(seed)
    return SMoERewardModel.from_backbone(backbone, tokenizer=tokenizer, preset=preset,
                                         num_experts=None if preset == "single" else num_experts, **config_overrides)


def train_head(model, features, output_dir: str, seed: int, epochs: float, **argument_overrides):
    """Trains `model`'s head on cached train features with the paper's settings, evaluating on validation each
    epoch, quietly unless asked (`argument_overrides`: any other `SMoETrainingArguments`)."""
    check_epochs(epochs)
    args = SMoETrainingArguments(output_dir=output_dir, seed=seed, num_train_epochs=epochs,
                                 **{"disable_tqdm": True, **argument_overrides})
    return run_trainer(model, features, args)


def run_trainer(model, features, args, resume_from_checkpoint=None, **trainer_options):
    """An `SMoETrainer` on the train and validation features, trained (from `resume_from_checkpoint`, ending
    bit-identical to an uninterrupted run); a head that ends with NaN or inf weights is refused. `trainer_options`:
    more `SMoETrainer` arguments (a `data_collator`)."""
    check_epochs(args.num_train_epochs)
    trainer = SMoETrainer(model, args, train_dataset=features["train"], eval_dataset=features["validation"],
                          **trainer_options)
    if args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)  # quiet runs keep every term in trainer.state.log_history
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    check_finite_head(model)
    return trainer


def check_epochs(epochs) -> None:
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise InputError(f"epochs: must be a number > 0, got {epochs!r}; 0 epochs would save an untrained head.")


def last_complete_checkpoint(folder) -> str | None:
    """The newest Trainer checkpoint in `folder` that was written to the end (its trainer_state.json is written
    last); None when there is none."""
    complete = [path for path in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                if (path / TRAINER_STATE_NAME).is_file()]
    return str(max(complete, key=lambda path: int(path.name.split("-")[-1]))) if complete else None


def remove_cut_checkpoints(folder) -> None:
    """Deletes the Trainer checkpoints a kill cut short (no trainer_state.json), so none is mistaken for a
    finished one."""
    for path in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if not (path / TRAINER_STATE_NAME).is_file():
            shutil.rmtree(path)


def check_finite_head(model) -> None:
    """A head whose weights hold NaN or inf scores nothing: refused before it can be saved."""
    broken = non_finite_parameters(model.head)
    if broken:
        weights = ", ".join(f"{name}={model.config.to_dict()[name]}" for name in LAMBDA_NAMES)
        raise InputError(f"training diverged: the head's weights {broken[:3]} hold NaN or inf (loss weights "
                         f"{weights}); lower the loss weights or the learning rate. Nothing was saved.")


def save_checkpoint(model, tokenizer, output_dir, encoding: dict, **save_options) -> None:
    """The model (full, or with `heads_only=True` the head and a reference to its backbone: `save_options` go to
    `save_pretrained`) with the `encoding` of its training features (`training_encoding`: every later use encodes
    the same way), and its tokenizer. A tokenizer without a chat template is saved with the plain fallback
    written into a copy (the caller's tokenizer is left as it is: its template is part of the embedding cache's
    key), so `apply_chat_template` (the model card's snippet) reproduces the training encoding. A heads-only
    checkpoint also records the digest of its backbone's weights, so that loading it on another backbone is
    refused (`load_checkpoint`)."""
    model.config.encoding = encoding
    with (recorded(model.config, BACKBONE_DIGEST, weights_digest(model.backbone)) if save_options.get("heads_only")
          else contextlib.nullcontext()):
        model.save_pretrained(output_dir, **save_options)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    tokenizer.save_pretrained(output_dir)


@contextlib.contextmanager
def recorded(config, name: str, value):
    """`config.name = value` while the block saves it; the model's own config is left as it was."""
    had, previous = hasattr(config, name), getattr(config, name, None)
    setattr(config, name, value)
    try:
        yield
    finally:
        if had:
            setattr(config, name, previous)
        else:
            delattr(config, name)


def check_job(data: DataArguments, model: ModelArguments, training) -> Path:
    """Every argument that can be checked before data or models load; returns the output folder."""
    check_epochs(training.num_train_epochs)
    if model.preset not in PRESETS:
        raise InputError(f"preset: unknown preset {model.preset!r}; choose one of {sorted(PRESETS)}.")
    for name, value in (("max_pairs", data.max_pairs), ("max_length", data.max_length),
                        ("num_experts", model.num_experts)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name}: must be an integer >= 1, got {value!r}.")
    if isinstance(model.tune_layers, bool) or not isinstance(model.tune_layers, int) or model.tune_layers < 0:
        raise InputError(f"tune_layers: must be an integer >= 0 (0: frozen backbone), got {model.tune_layers!r}.")
    if model.tune_layers and model.heads_only:
        raise InputError("heads_only: --tune_layers changes the backbone, so the checkpoint must carry it; drop "
                         "--heads_only (or --tune_layers).")
    for name, value in (("seed", training.seed), ("split_seed", data.split_seed)):
        if not 0 <= value < 2**32:
            raise InputError(f"{name}: must be between 0 and 2**32 - 1, got {value}.")
    SMoERewardConfig.check_options(model.config_overrides())
    check_loss_weights({name: value for name, value in model.config_overrides().items() if name in LAMBDA_NAMES})
    if training.push_to_hub:
        if not training.hub_model_id:
            raise InputError("hub_model_id: --push_to_hub needs the repo to push to; pass --hub_model_id ORG/NAME.")
        check_repo_id(training.hub_model_id)
        if model.heads_only and not is_hub_id(model.backbone):
            raise InputError(f"heads_only: --push_to_hub with --heads_only needs the backbone on the Hub (--backbone "
                             f"ORG/NAME), not {model.backbone}, which nobody who loads the heads has.")
    feature_root(data.cache_dir)
    check_resume_point(training.resume_from_checkpoint, job_record(data, model, training))
    protected = run_inputs(backbone=model.backbone, dataset=data.dataset, cache=data.cache_dir)
    return check_output_dir(training.output_dir, overwrite=training.overwrite_output_dir, protected=protected)


def run_inputs(*, backbone=None, dataset=None, cache=None) -> dict:
    """{what it is: path} of the local folders and files a run reads, which its output must never replace."""
    named = {"backbone": backbone, "dataset": dataset, "feature cache": cache}
    return {name: path for name, path in named.items() if path and Path(path).expanduser().exists()}


def staging_for(record: dict, output_dir: Path, overwrite: bool) -> Path:
    """The run's staging folder. An interrupted run of the same job (`record`) resumes in it; one of another job
    is replaced when it holds no finished epoch (nothing to lose: features live in the cache), and otherwise kept
    unless `overwrite`."""
    staging = staging_dir(output_dir)
    record_file = staging / "job.json"
    if staging.exists():
        recorded = json.loads(record_file.read_text()) if record_file.is_file() else {}
        if recorded == record:
            print(f"Resuming the interrupted run in {staging}")
            remove_cut_checkpoints(staging / "trainer")
            return staging
        if last_complete_checkpoint(staging / "trainer") is not None and not overwrite:
            raise InputError(f"output_dir: {staging} holds an interrupted run of a different job (it differs in "
                             f"{record_differences(recorded, record)}); rerun that job's command to resume it, or "
                             "pass --overwrite to discard it.")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    write_text_atomic(record_file, json.dumps(record))
    return staging


def record_differences(recorded: dict, record: dict) -> str:
    """The settings (`group.key`) in which a job's record differs from a recorded one."""
    changed = sorted(f"{group}.{key}" for group, values in record.items() for key, value in values.items()
                     if recorded.get(group, {}).get(key) != value)
    return ", ".join(changed) or "its record"


def check_resume_point(checkpoint, record: dict) -> None:
    """`--resume_from_checkpoint`: a complete Trainer checkpoint (its trainer_state.json is written last) and, when
    it lies in an interrupted run's staging folder, one of this same job (that folder's job.json); checked before
    anything loads, so resuming never continues another job's weights under this job's record."""
    if not checkpoint:
        return
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise InputError(f"resume_from_checkpoint: no such folder {checkpoint}; give a checkpoint-N folder of an "
                         "interrupted run (under .OUTPUT.partial/trainer/), or drop the flag.")
    if not (path / TRAINER_STATE_NAME).is_file():
        raise InputError(f"resume_from_checkpoint: {checkpoint} is not a complete Trainer checkpoint (no "
                         f"{TRAINER_STATE_NAME}: a kill cut it short); give an earlier checkpoint, or drop the flag.")
    job_file = path.parent.parent / "job.json"
    recorded = json.loads(job_file.read_text()) if job_file.is_file() else record
    if recorded != record:
        raise InputError(f"resume_from_checkpoint: {checkpoint} is a checkpoint of a different job (it differs in "
                         f"{record_differences(recorded, record)}); resume it with that job's command, or drop the "
                         "flag.")


MAX_DEFAULT_EXPERTS = 50  # the largest K the paper trains (Fig. 6)


def default_num_experts(preset: str, train) -> int | None:
    """K when `--num_experts` is not given: one expert per category of the train pairs and one more (the paper's
    rule: SHP's 4 categories, K = 5), so that every category can have an expert of its own; None (the config's
    default: 1 for single, 5 otherwise) when the pairs carry fewer than two categories."""
    if preset == "single" or "category" not in train.column_names:
        return None
    categories = len({category for category in train["category"] if category})
    return min(categories + 1, MAX_DEFAULT_EXPERTS) if categories >= 2 else None


def train_reward_model(data: DataArguments, model_args: ModelArguments, training) -> dict:
    """`smoe train`: returns the test metrics. Everything is written to a staging folder and renamed into
    `training.output_dir` when complete; a killed run resumes from its last saved checkpoint when rerun (or from
    `training.resume_from_checkpoint`). `training` is an `SMoETrainingArguments`; with `push_to_hub` the finished
    checkpoint and card are pushed to `hub_model_id`. Under `torchrun` / `accelerate launch` every process trains
    its share of each batch and the main process alone writes and pushes."""
    process = state()
    output_dir = check_job(data, model_args, training)
    pairs = load_pairs(data.dataset, data.format, max_pairs=data.max_pairs, seed=data.split_seed)
    splits = split_for_training(pairs, data.split_seed, validation=data.validation_fraction,
                                test=data.test_fraction)
    num_experts = model_args.num_experts
    if num_experts is None:
        num_experts = default_num_experts(model_args.preset, splits["train"])
    model, tokenizer = load_backbone_model(model_args.backbone, model_args.preset, num_experts, training.seed,
                                           **model_args.config_overrides())
    record = job_record(data, model_args, training)
    if process.is_main_process:
        staging_for(record, output_dir, training.overwrite_output_dir)
    process.wait_for_everyone()
    staging = staging_dir(output_dir)
    trainer_args = dataclasses.replace(training, output_dir=str(staging / "trainer"), push_to_hub=False,
                                       resume_from_checkpoint=None)
    resume_from = training.resume_from_checkpoint or last_complete_checkpoint(trainer_args.output_dir)
    if model_args.tune_layers:
        train_top_layers(model, tokenizer, splits, trainer_args, model_args.tune_layers,
                         lora_rank=model_args.lora_rank, lora_alpha=model_args.lora_alpha, cache_dir=data.cache_dir,
                         max_length=data.max_length, resume_from=resume_from)
        features_of = ("validation", "test")  # the tuned layers give new features; training never needed them
    else:
        features_of = tuple(splits)
    cache = EmbeddingCache(model, tokenizer, cache_dir=data.cache_dir, max_length=data.max_length)
    features = {name: cache.pair_features(splits[name]) for name in features_of}
    if not model_args.tune_layers:
        run_trainer(model, features, trainer_args, resume_from)
    results = evaluate_head(model, features)
    if process.is_main_process:
        publish_run(model, tokenizer, cache.encoding, staging, output_dir, record, results, data, model_args, training)
    process.wait_for_everyone()
    return results


def train_top_layers(model, tokenizer, splits: dict, trainer_args, tune_layers: int, *, lora_rank: int = 0,
                     lora_alpha: float = 16.0, cache_dir=None, max_length: int = 1024, resume_from=None) -> tuple:
    """Trains `model`'s top `tune_layers` layers with its head under its objective, from states entering them
    cached once per text (`mixture_tuning`), then freezes the tuned backbone again (LoRA adapters merged).
    Returns (the `TopLayersMixture` around the tuned model, the hidden-state cache): what `tuned_pair_features`
    measures it with."""
    wrapper, adapters = prepare_top_layers(model, tune_layers, lora_rank, lora_alpha)
    sets, states = cached_state_sets(wrapper, tokenizer, splits, cache_dir=cache_dir, max_length=max_length)
    run_trainer(wrapper, sets, trainer_args, resume_from, data_collator=MixtureStatesCollator(states))
    finish_top_layers(model, adapters)
    return wrapper, states


def train_tuned_preset(backbone, tokenizer, splits: dict, preset: str, num_experts: int, seed: int, epochs: float,
                       output_dir: str, tune_layers: int, training: dict | None = None, *, cache_dir=None,
                       max_length: int = 1024, **config_overrides) -> tuple:
    """`train_preset` with a copy of `backbone`'s top `tune_layers` layers trained jointly with the head on the
    train and validation pairs of `splits`, under its objective (`train_top_layers`). Returns (model, `features_of`):
    `features_of(pairs)` gives the tuned model's pair features computed from the cached states entering the tuned
    layers (`tuned_pair_features`), so the presets and seeds of one experiment share one run of the lower layers.
    `training`: `SMoETrainingArguments` fields to change."""
    model = fresh_model(copy.deepcopy(backbone), tokenizer, preset, num_experts, seed, **config_overrides)
    check_epochs(epochs)
    args = SMoETrainingArguments(output_dir=output_dir, seed=seed, num_train_epochs=epochs,
                                 **{"disable_tqdm": True, **(training or {})})
    wrapper, states = train_top_layers(model, tokenizer, splits, args, tune_layers, cache_dir=cache_dir,
                                       max_length=max_length)
    return model, functools.partial(tuned_pair_features, wrapper, states)


def heads_only_options(model_args: ModelArguments) -> dict:
    """`save_pretrained` options of a heads-only run: the backbone as given (a Hub id, the embedded default's
    converted folder, or a folder made absolute so it resolves from anywhere), at its revision."""
    if not model_args.heads_only:
        return {}
    source = resolve_backbone(model_args.backbone)
    if Path(source).exists():
        source = str(Path(source).resolve())
    return {"heads_only": True, "backbone_source": source, "backbone_revision": model_args.backbone_revision}


def publish_run(model, tokenizer, encoding, staging, output_dir, record, results, data, model_args,
                training) -> None:
    """Checkpoint, card and results into the staging folder, renamed into place, then pushed if asked."""
    shutil.rmtree(staging / "trainer", ignore_errors=True)  # Trainer checkpoints only serve resuming
    save_checkpoint(model, tokenizer, staging, encoding, **heads_only_options(model_args))
    routing_keys = ("routing_entropy", "global_entropy", "expert_correlation")
    repo_id = training.hub_model_id if training.push_to_hub else None
    write_model_card(staging, base_model=backbone_hub_id(model_args.backbone), datasets=[data.dataset],
                     eval_results={"accuracy": results["accuracy"]},
                     routing_stats={key: results[key] for key in routing_keys}, dataset_name=data.dataset,
                     repo_id=repo_id, destination=output_dir)
    save_run(staging, record, results)
    publish(staging, output_dir)  # job.json stays until here: a kill inside publish still resumes
    (output_dir / "job.json").unlink()
    if repo_id:
        results["pushed"] = push_checkpoint(output_dir, repo_id)
