"""Model cards and Hub pushes for trained checkpoints.

`write_model_card` renders `hub_cards/model_card.md` (a Jinja template in `huggingface_hub.ModelCard.from_template`'s
format) into the checkpoint's README.md, with the evaluation results as `model-index` metadata. `push_checkpoint`
uploads what `AutoModel.from_pretrained(repo, trust_remote_code=True)` and `AutoTokenizer` need, plus the card, and
nothing else from the folder (Trainer checkpoints, results, caches stay local).
"""

import json
import os
import tempfile
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoTokenizer

from .loading import cache_root, first_line
from .modeling.configuration_smoe import InputError, LAMBDA_NAMES, SMoERewardConfig
from .outputs import write_text_atomic

TAGS = ["reward-model", "mixture-of-experts", "hf-smoe"]
# The card's expert table lives between these markers, so `smoe interpret` can replace it in place.
EXPERTS_START, EXPERTS_END = "<!-- hf_smoe:experts -->", "<!-- /hf_smoe:experts -->"
CARD_TEMPLATE = "model_card.md"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def template_path(name: str = CARD_TEMPLATE) -> Path:
    """hub_cards/ sits next to hf_smoe/ in the source tree (editable installs); a wheel ships it inside hf_smoe/."""
    package = Path(__file__).resolve().parent
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


def remote_code_files(config: dict) -> list:
    """The .py files config.json's auto_map points at: without them the pushed repo cannot load."""
    references = [ref for value in config.get("auto_map", {}).values()
                  for ref in (value if isinstance(value, list) else [value]) if ref]
    return sorted({ref.split(".")[0] + ".py" for ref in references if "--" not in ref})


def checkpoint_files(output_dir: Path, config: dict) -> list:
    """Paths (relative, POSIX) the checkpoint owns, to upload: config.json, the weights (the shards its index
    names), README.md, the remote code config.json's auto_map names, and the files its tokenizer saves. Nothing
    else in the folder (Trainer checkpoints, results, a stray `tokenizer_backup.json`) leaves the machine. A
    ValueError names what a loadable checkpoint lacks, and any owned file that links outside the folder."""
    if (output_dir / "model.safetensors").is_file():
        weights = ["model.safetensors"]
    elif (output_dir / "model.safetensors.index.json").is_file():
        index = json.loads((output_dir / "model.safetensors.index.json").read_text())
        weights = ["model.safetensors.index.json", *sorted(set(index.get("weight_map", {}).values()))]
    else:
        raise InputError(f"output_dir: {output_dir} is not an hf_smoe checkpoint (no model.safetensors); save it "
                         "with model.save_pretrained(output_dir).")
    for names, what in ((weights, "the weight files its index names"),
                        (remote_code_files(config), "the remote code that config.json's auto_map names")):
        missing = [name for name in names if not (output_dir / name).is_file()]
        if missing:
            raise InputError(f"output_dir: {output_dir} lacks {what}: {', '.join(missing)}; save it with "
                             "model.save_pretrained(output_dir).")
    owned = {"config.json", *weights, *remote_code_files(config), *tokenizer_files(output_dir)}
    owned |= {"README.md"} if (output_dir / "README.md").is_file() else set()
    for name in sorted(owned):
        target = (output_dir / name).resolve()
        if output_dir.resolve() not in target.parents:
            raise InputError(f"output_dir: {output_dir / name} links to {target}, outside the checkpoint; copy the "
                             "file into the folder or remove the link.")
    return sorted(owned)


def tokenizer_files(output_dir: Path) -> list:
    """The files the checkpoint's tokenizer writes (what `save_pretrained` produces), that are in the folder."""
    if not (output_dir / "tokenizer_config.json").is_file():
        return []
    with tempfile.TemporaryDirectory() as scratch:
        try:
            written = AutoTokenizer.from_pretrained(output_dir).save_pretrained(scratch)
        except (OSError, ValueError) as error:
            raise InputError(f"output_dir: the tokenizer in {output_dir} does not load ({error}); save it again "
                             "with tokenizer.save_pretrained(output_dir).") from None
        names = {Path(path).relative_to(scratch).as_posix() for path in written}
    return sorted(name for name in names if (output_dir / name).is_file())


def check_repo_id(repo_id: str) -> None:
    """A one-line ValueError for an id the Hub would refuse, before anything is created or uploaded."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise InputError(f"repo_id: {repo_id!r} is not a valid Hub repo id ('namespace/name'): {error}") from None


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


def push_checkpoint(output_dir, repo_id: str, *, token: str | None = None, private: bool = False,
                    commit_message: str | None = None, revision: str | None = None) -> str:
    """Uploads a saved checkpoint to the Hub in one commit and returns the commit URL.

    Creates the repo if needed (an existing repo keeps its visibility) and the branch `revision` if given. Uploads
    only what the checkpoint owns (`checkpoint_files`: config.json, the safetensors weights as large files, the
    remote code, the tokenizer's files and README.md), with a card written for local use pointed at `repo_id`.
    Everything is checked before any network call; a Hub that cannot be reached or refuses is one InputError.
    """
    output_dir = Path(output_dir)
    config = read_smoe_config(output_dir)
    files = checkpoint_files(output_dir, config)
    check_repo_id(repo_id)
    source = (config.get("backbone_source") or {}).get("name_or_path")
    if source and not is_hub_id(source):
        raise InputError(f"backbone_source: {output_dir} is a heads-only checkpoint whose backbone is the local "
                         f"folder {source}, which nobody who loads {repo_id} has; push the backbone to the Hub and "
                         "save the heads with backbone_source=ORG/NAME (or push a full checkpoint).")
    operations = [CommitOperationAdd(name, published_bytes(output_dir, name, repo_id) or output_dir / name)
                  for name in files]
    message = commit_message or f"Upload hf_smoe reward model (preset {config['preset']}, K={config['num_experts']})"
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(repo_id, operations=operations, commit_message=message, revision=revision)
    except (HfHubHTTPError, ConnectionError, httpx2.HTTPError) as error:  # OfflineModeIsEnabled is a ConnectionError
        raise InputError(f"push_to_hub: {repo_id} could not be pushed ({first_line(error)}); the checkpoint is saved in "
                         f"{output_dir}: push it again with `smoe push {output_dir} {repo_id}` once the Hub is "
                         "reachable (HF_HUB_OFFLINE unset) and your token may write there.") from None
    return commit.commit_url


def published_bytes(output_dir: Path, name: str, repo_id: str) -> bytes | None:
    """The text files that could name local paths (README.md, config.json), as they are published: a card written
    for local use loads from `repo_id`; None for a file published as it is. An absolute path of this machine left
    in them is refused."""
    if name not in ("README.md", "config.json"):
        return None
    text = (output_dir / name).read_text(encoding="utf-8")
    if name == "README.md":
        for local in {str(output_dir), str(output_dir.resolve())}:
            text = text.replace(f'from_pretrained("{local}"', f'from_pretrained("{repo_id}"')
    for local in {str(output_dir.resolve()), str(Path.home()), str(cache_root().resolve())}:
        if len(local) > 1 and local in text:
            raise InputError(f"output_dir: {output_dir / name} names the local path {local}, which must not be "
                             "published; write the card with write_model_card(..., repo_id=...) and save the model "
                             "with hf_smoe, or edit the file.")
    return text.encode("utf-8")
