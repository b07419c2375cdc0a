"""Hub pushes of trained checkpoints: `push_checkpoint` uploads, in one commit, what
`AutoModel.from_pretrained(repo, trust_remote_code=True)` and `AutoTokenizer` need, plus the card, and nothing else
from the folder (Trainer checkpoints, results, caches stay local). Everything is checked before any network call.
"""

import json
import tempfile
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoTokenizer

from ..errors import InputError
from ..runtime import cache_root, first_line
from .card import is_hub_id, read_smoe_config


def check_repo_id(repo_id: str) -> None:
    """A one-line ValueError for an id the Hub would refuse, before anything is created or uploaded."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise InputError(f"repo_id: {repo_id!r} is not a valid Hub repo id ('namespace/name'): {error}") from None


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


def remote_code_files(config: dict) -> list:
    """The .py files config.json's auto_map points at: without them the pushed repo cannot load."""
    references = [ref for value in config.get("auto_map", {}).values()
                  for ref in (value if isinstance(value, list) else [value]) if ref]
    return sorted({ref.split(".")[0] + ".py" for ref in references if "--" not in ref})


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


def published_bytes(output_dir: Path, name: str, repo_id: str) -> bytes | None:
    """The text files that could name local paths (README.md, config.json), as they are published: a card written
    for local use loads from `repo_id`; None for a file published as it is. An absolute local path left in them
    (the checkpoint folder, the home folder, the hf_smoe cache) is refused."""
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
