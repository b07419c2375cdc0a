"""Model cards for trained checkpoints: `write_model_card` renders `hub_cards/model_card.md` (a Jinja template in
`huggingface_hub.ModelCard.from_template`'s format) into the checkpoint's README.md, with the evaluation results as
`model-index` metadata; `write_expert_table` puts `smoe interpret`'s expert table into it afterwards.

A card names models and datasets the way a reader elsewhere can find them: Hub ids as they are, local paths by their
last component only.
"""

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..errors import InputError
from ..modeling.configuration_smoe import LAMBDA_NAMES, SMoERewardConfig
from ..runtime import write_text_atomic

TAGS = ["reward-model", "mixture-of-experts", "hf-smoe"]
# The card's expert table lives between these markers, so `smoe interpret` can replace it in place.
EXPERTS_START, EXPERTS_END = "<!-- hf_smoe:experts -->", "<!-- /hf_smoe:experts -->"
CARD_TEMPLATE = "model_card.md"


def template_path(name: str = CARD_TEMPLATE) -> Path:
    """hub_cards/ sits next to hf_smoe/ in the source tree (editable installs); a wheel ships it inside hf_smoe/."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package.parent / "hub_cards", package / "hub_cards"):
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"model card template {name!r} not found in hub_cards/ next to or inside {package}")


def read_smoe_config(output_dir: Path) -> dict:
    """The checkpoint's config.json; a one-line ValueError when the folder is missing or not an hf_smoe checkpoint."""
    if not output_dir.is_dir():
        raise InputError(f"output_dir: {output_dir} does not exist or is not a folder.")
    config_file = output_dir / "config.json"
    if not config_file.is_file():
        raise InputError(f"output_dir: {output_dir} is not an hf_smoe checkpoint (no config.json).")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != SMoERewardConfig.model_type:
        raise InputError(f"output_dir: {output_dir} is not an hf_smoe checkpoint (config.json model_type is "
                         f"{config.get('model_type')!r}, expected {SMoERewardConfig.model_type!r}).")
    return config


def is_hub_id(name: str | None) -> bool:
    """'namespace/name' that is not a local path: only those belong in card metadata (base_model, datasets)."""
    if not name or name.count("/") != 1 or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def public_name(name: str) -> str:
    """How a card names a model or dataset: a Hub id or a plain label as it is, a local path by its last component
    (the path means nothing on another machine and tells where the author keeps files)."""
    if is_hub_id(name) or not (os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)
                               or os.sep in name):
        return name
    return Path(name).name or name


def eval_results_metadata(eval_results: dict, dataset_name: str) -> list:
    """One model-index entry per metric, all on `dataset_name` (reward modeling as text classification)."""
    return [EvalResult(task_type="text-classification", task_name="Reward Modeling", dataset_type=dataset_name,
                       dataset_name=dataset_name, metric_type=name, metric_name=name, metric_value=float(value))
            for name, value in eval_results.items()]


def split_routing_stats(routing_stats: dict, num_experts: int) -> tuple:
    """Scalar statistics (routing entropy, ...) and per-expert ones (lists of K values, e.g. expert usage)."""
    scalars, per_expert = {}, {}
    for name, value in routing_stats.items():
        if isinstance(value, (list, tuple)):
            if len(value) != num_experts:
                raise InputError(f"routing_stats: {name!r} has {len(value)} values; expected one per expert "
                                 f"({num_experts}).")
            per_expert[name] = [float(v) for v in value]
        else:
            scalars[name] = float(value)
    return scalars, per_expert


def write_model_card(output_dir, *, base_model: str, datasets: list, eval_results: dict, routing_stats: dict,
                     dataset_name: str | None = None, repo_id: str | None = None, destination=None) -> Path:
    """Writes README.md into a saved checkpoint: method, K, preset, λ's, routing statistics, usage, citation, and
    `eval_results` as model-index metadata on `dataset_name` (default: the first of `datasets`). Returns its path.

    `base_model` and `datasets` go into the metadata only when they are Hub ids ('namespace/name', not a local
    path); the text names them either way. `repo_id` is what the usage snippet loads (default: `destination`, the
    folder the checkpoint ends up in when `output_dir` is a staging folder, else `output_dir`).
    """
    output_dir = Path(output_dir)
    config = read_smoe_config(output_dir)
    dataset_name = public_name(dataset_name or (datasets[0] if datasets else None) or "") or None
    if eval_results and dataset_name is None:
        raise InputError("dataset_name: eval_results need the dataset they were measured on; pass dataset_name or "
                         "datasets.")
    destination = Path(destination or output_dir).resolve()
    model_name = repo_id.split("/")[-1] if repo_id else destination.name
    routing_scalars, routing_per_expert = split_routing_stats(routing_stats, config["num_experts"])
    card_data = ModelCardData(
        model_name=model_name if eval_results else None, base_model=base_model if is_hub_id(base_model) else None,
        datasets=[name for name in datasets if is_hub_id(name)] or None, tags=TAGS, library_name="transformers",
        pipeline_tag="text-classification",
        eval_results=eval_results_metadata(eval_results, dataset_name) if eval_results else None,
    )
    card = ModelCard.from_template(
        card_data, template_path=str(template_path()), model_name=model_name, load_from=repo_id or str(destination),
        backbone=public_name(base_model), training_data=[public_name(name) for name in datasets],
        eval_dataset=dataset_name, eval_results=eval_results,
        num_experts=config["num_experts"], preset=config["preset"],
        lambdas={name: config[name] for name in LAMBDA_NAMES}, routing_scalars=routing_scalars,
        routing_per_expert=routing_per_expert, experts_start=EXPERTS_START, experts_end=EXPERTS_END,
    )
    return write_text_atomic(output_dir / "README.md", str(card))


def write_expert_table(output_dir, table: str, interpreted_on: str) -> Path:
    """Puts `smoe interpret`'s expert table (descriptions, fidelity, specialization) into the checkpoint's card,
    between the card's expert markers (replacing an earlier table), so a pushed model tells its readers what each
    expert does. A folder without a card gets one first; a card without the markers gets an Experts section."""
    output_dir = Path(output_dir)
    path = output_dir / "README.md"
    if not path.is_file():
        write_model_card(output_dir, base_model=backbone_name(read_smoe_config(output_dir)), datasets=[],
                         eval_results={}, routing_stats={})
    card = path.read_text(encoding="utf-8")
    section = (f"{EXPERTS_START}\nEach expert described in one line by an LLM from its top-routed prompts, and checked "
               f"on held-out prompts of {interpreted_on} (`smoe interpret`; paper §6.1, Table 3):\n\n{table}"
               f"{EXPERTS_END}")
    if EXPERTS_START in card and EXPERTS_END in card:
        before, rest = card.split(EXPERTS_START, 1)
        card = before + section + rest.split(EXPERTS_END, 1)[1]
    else:
        added = f"## Experts\n\n{section}\n\n"
        card = card.replace("## Usage", added + "## Usage", 1) if "## Usage" in card else f"{card}\n{added}"
    return write_text_atomic(path, card)


def backbone_name(config: dict) -> str:
    """The backbone a checkpoint's config names (its `_name_or_path`), for a card written after the fact."""
    return (config.get("backbone_config") or {}).get("_name_or_path") or "not recorded"
