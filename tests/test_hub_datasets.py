"""Hub dataset names: real data files pushed as dataset repos to the local Hub (tests/hub_server.py), then read by
`load_pairs` through `datasets.load_dataset`, must give exactly the pairs the same local files give."""

import hashlib
import shutil
import warnings
from pathlib import Path

import datasets
import pytest
from datasets.exceptions import DatasetNotFoundError
from hub_server import hub_server  # noqa: F401  (the fixture)
from huggingface_hub import HfApi, constants

from hf_smoe.data.loading import load_pairs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = {subset: DATA / "hh-rlhf" / f"{subset}-base.test.jsonl.gz" for subset in ("harmless", "helpful")}
WEBGPT = DATA / "webgpt" / "webgpt.test.json"
HH_CARD = "---\nlicense: mit\ntags:\n- human-feedback\n---\n# HH-RLHF\n\nHelpful and harmless test splits.\n"
WEBGPT_REPO = "hf-smoe-tests/webgpt-comparisons"  # not the Hub's openai/webgpt_comparisons, whose schema differs
PRIVATE_REPO = "hf-smoe-tests/private-webgpt"


@pytest.fixture(scope="module")
def dataset_repos(hub_server, tmp_path_factory):
    """The Hub's layout of Anthropic/hh-rlhf (card, `{subset}-base/test.jsonl.gz`, the real files' bytes) and a
    WebGPT file, public and private, pushed through huggingface_hub's dataset-repo uploads."""
    api = HfApi(endpoint=hub_server.endpoint, token=hub_server.token)
    folder = tmp_path_factory.mktemp("hh-rlhf")
    (folder / "README.md").write_text(HH_CARD)
    for subset, file in HH.items():
        (folder / f"{subset}-base").mkdir()
        shutil.copy(file, folder / f"{subset}-base" / "test.jsonl.gz")
    api.create_repo("Anthropic/hh-rlhf", repo_type="dataset")
    api.upload_folder(repo_id="Anthropic/hh-rlhf", repo_type="dataset", folder_path=folder,
                      commit_message="HH-RLHF test splits")
    for repo_id, private in ((WEBGPT_REPO, False), (PRIVATE_REPO, True)):
        api.create_repo(repo_id, repo_type="dataset", private=private)
        api.upload_file(repo_id=repo_id, repo_type="dataset", path_or_fileobj=WEBGPT, path_in_repo="data/test.json")
    return hub_server


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """An empty HF_HOME for each test: nothing is read from a cache another test (or a user) filled; no token."""
    home = tmp_path / "hf_home"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", home / "datasets" / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", home / "datasets" / "downloads" / "extracted")
    return home


def quiet_load_pairs(*args, **kwargs):
    """load_pairs with its dropped-pair warnings returned: (pairs as a list of rows, warning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(*args, **kwargs)
    return pairs.to_list(), [str(warning.message) for warning in caught if warning.category is UserWarning]


def lfs_download(file: Path) -> tuple:
    """The request log entry of `file` fetched from LFS storage (after a `/resolve` redirect)."""
    return "storage", "GET", f"/lfs/{hashlib.sha256(file.read_bytes()).hexdigest()}", 200


def test_hh_rlhf_by_its_hub_name_equals_the_local_files(dataset_repos):
    files = dataset_repos.files("Anthropic/hh-rlhf", repo_type="dataset")
    assert set(files) == {".gitattributes", "README.md", "harmless-base/test.jsonl.gz", "helpful-base/test.jsonl.gz"}
    assert files["helpful-base/test.jsonl.gz"].lfs_oid == hashlib.sha256(HH["helpful"].read_bytes()).hexdigest()
    assert files["README.md"].data == HH_CARD.encode()
    info = HfApi(endpoint=dataset_repos.endpoint).dataset_info("Anthropic/hh-rlhf")
    assert (info.card_data.license, info.tags, info.sha) == (
        "mit", ["human-feedback"], dataset_repos.dataset_repos["Anthropic/hh-rlhf"].branches["main"])

    # Without data_dir the Hub name reads every subset's test split, in path order, as the real repo does.
    harmless, harmless_dropped = quiet_load_pairs(HH["harmless"])
    helpful, _ = quiet_load_pairs(HH["helpful"])
    assert (len(harmless), len(helpful)) == (2303, 2339)
    requests_before = len(dataset_repos.requests)
    pairs, dropped = quiet_load_pairs("Anthropic/hh-rlhf", split="test")  # format known from HUB_FORMATS
    assert len(pairs) == 4642
    assert pairs[0] == harmless[0] and pairs[2302] == harmless[-1]
    assert pairs[2303] == helpful[0] and pairs[-1] == helpful[-1]
    assert pairs == harmless + helpful
    assert dropped == ["hh-rlhf: dropped 8 pairs with an empty response.",
                       "hh-rlhf: dropped 14 pairs whose transcripts differ before the last assistant turn."]
    assert harmless_dropped == ["hh-rlhf: dropped 4 pairs with an empty response.",
                                "hh-rlhf: dropped 5 pairs whose transcripts differ before the last assistant turn."]
    # Both files came from the Hub: resolved on the dataset repo, then fetched through the LFS redirect.
    served = dataset_repos.requests[requests_before:]
    assert ("hub", "HEAD", "/datasets/Anthropic/hh-rlhf/resolve/main/README.md", 200) in served
    assert lfs_download(HH["harmless"]) in served and lfs_download(HH["helpful"]) in served
    assert dataset_repos.unhandled == []


@pytest.mark.parametrize("selection", [{"data_dir": "helpful-base"}, {"data_files": {"test": "helpful-base/*.gz"}}],
                         ids=["data_dir", "data_files"])
@pytest.mark.parametrize("through", ["load_pairs", "load_dataset"])
def test_hh_rlhf_subset_loaded_from_the_hub_equals_the_local_file(dataset_repos, selection, through):
    """One subset, as the dataset card says to load it: `load_pairs(name, hub_options={"data_dir": ...})`, or a
    `load_dataset(name, data_dir=...)` result handed to load_pairs."""
    local, _ = quiet_load_pairs(HH["helpful"], category="helpful")
    requests_before = len(dataset_repos.requests)
    if through == "load_pairs":
        pairs, dropped = quiet_load_pairs("Anthropic/hh-rlhf", split="test", category="helpful", hub_options=selection)
    else:
        subset = datasets.load_dataset("Anthropic/hh-rlhf", split="test", **selection)
        assert subset.num_rows == 2352
        pairs, dropped = quiet_load_pairs(subset, category="helpful")
    assert len(pairs) == 2339
    assert pairs[0] == local[0] and pairs[-1] == local[-1]
    assert pairs == local
    assert {pair["category"] for pair in pairs} == {"helpful"}
    assert dropped == ["hh-rlhf: dropped 4 pairs with an empty response.",
                       "hh-rlhf: dropped 9 pairs whose transcripts differ before the last assistant turn."]
    served = dataset_repos.requests[requests_before:]
    assert lfs_download(HH["helpful"]) in served and lfs_download(HH["harmless"]) not in served
    assert dataset_repos.unhandled == []


def test_webgpt_dataset_repo_with_explicit_format_drops_the_ties(dataset_repos):
    blob = dataset_repos.files(WEBGPT_REPO, repo_type="dataset")["data/test.json"]
    assert blob.lfs_oid is None and blob.data == WEBGPT.read_bytes()  # a regular (non-LFS) file, as on the Hub
    local, local_dropped = quiet_load_pairs(WEBGPT, format="webgpt")
    requests_before = len(dataset_repos.requests)
    pairs, dropped = quiet_load_pairs(WEBGPT_REPO, format="webgpt", split="test")
    assert len(pairs) == len(local) == 901 - 245
    assert dropped == local_dropped == ["webgpt: dropped 245 ties (equal scores)."]
    assert pairs[0] == local[0] and pairs[-1] == local[-1]
    assert pairs == local
    assert ("hub", "GET", f"/datasets/{WEBGPT_REPO}/resolve/{dataset_repos.dataset_repos[WEBGPT_REPO].branches['main']}"
            "/data/test.json", 200) in dataset_repos.requests[requests_before:]
    assert dataset_repos.unhandled == []


@pytest.mark.parametrize("repo_id", ["hf-smoe-tests/no-such-dataset", PRIVATE_REPO, "org/smoe-rm"],
                         ids=["missing", "private_anonymous", "model_namespace"])
def test_a_dataset_name_not_on_the_hub_says_so(dataset_repos, repo_id):
    if repo_id == "org/smoe-rm":  # a model repo of that name exists; dataset names are a separate namespace
        HfApi(endpoint=dataset_repos.endpoint, token=dataset_repos.token).create_repo(repo_id)
    with pytest.raises(DatasetNotFoundError) as error:
        load_pairs(repo_id, format="webgpt", split="test")
    assert str(error.value) == f"Dataset '{repo_id}' doesn't exist on the Hub or cannot be accessed."
    assert ("hub", "HEAD", f"/datasets/{repo_id}/resolve/main/README.md", 401) in dataset_repos.requests
    assert dataset_repos.unhandled == []


def test_private_dataset_loads_with_the_users_token(dataset_repos, monkeypatch):
    """load_pairs has no token argument: a private Hub dataset is read with the token the user is logged in with."""
    monkeypatch.setenv("HF_TOKEN", dataset_repos.token)
    pairs, dropped = quiet_load_pairs(PRIVATE_REPO, format="webgpt", split="test")
    assert len(pairs) == 656 and dropped == ["webgpt: dropped 245 ties (equal scores)."]
    assert dataset_repos.unhandled == []


def test_a_split_the_repo_lacks_is_named(dataset_repos):
    with pytest.raises(ValueError, match=r"""^Unknown split "train". Should be one of \['test'\].$"""):
        load_pairs("Anthropic/hh-rlhf", split="train")
    assert dataset_repos.unhandled == []
