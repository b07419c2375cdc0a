"""hf_smoe.hub: the model card, and pushes that land on a Hub (tests/hub_server.py) and load back elsewhere."""

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import encode_batch
from hub_server import hub_server  # noqa: F401  (the fixture)
from test_remote_code import BLOCK_HF_SMOE
from huggingface_hub import HfApi, ModelCard, metadata_load
from huggingface_hub.errors import RepositoryNotFoundError

from hf_smoe import SMoERewardModel, encode_pair
from hf_smoe.hub.card import write_model_card
from hf_smoe.hub.push import push_checkpoint

REPO_ID = "org/smoe-rm"
BASE_MODEL = "Ray2333/GRM-Llama3.2-3B-rewardmodel-ft"
EVAL_RESULTS = {"accuracy": 0.6962, "expert_purity": 0.856}
ROUTING_STATS = {"routing_entropy": 0.2, "global_entropy": 0.97, "expert_correlation": 0.011,
                 "expert_usage": [0.1, 0.2, 0.3, 0.4]}
ESSENTIAL_FILES = {"config.json", "model.safetensors", "configuration_smoe.py", "modeling_smoe.py", "README.md",
                   "tokenizer.json", "tokenizer_config.json"}

LOADER = BLOCK_HF_SMOE + textwrap.dedent("""
    import json, re
    import torch
    from huggingface_hub import hf_hub_download
    from transformers import AutoModel, AutoTokenizer

    repo_id, batch_file, out_file = sys.argv[1:]
    model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    batch = {k: torch.tensor(v) for k, v in json.load(open(batch_file)).items()}
    with torch.no_grad():
        out = model(**batch)
    results = {k: out[k].tolist() for k in ("logits", "expert_rewards", "routing_weights")}
    tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)  # as the card says
    results["tokenizer"] = {"chat_template": tokenizer.chat_template,
                            "input_ids": tokenizer("hello how are you today").input_ids}

    # The card's usage snippet, run as a user would paste it.
    readme = open(hf_hub_download(repo_id, "README.md")).read()
    card = {}
    exec(re.search(r"```python\\n(.*?)```", readme, re.S).group(1), card)
    results["card"] = {"messages": card["messages"], "input_ids": card["inputs"]["input_ids"].tolist(),
                       "logits": card["out"].logits.tolist(), "expert_rewards": card["out"].expert_rewards.tolist(),
                       "steered_logits": card["steered"].logits.tolist(),
                       "steered_weights": card["steered"].routing_weights.tolist()}
    assert "hf_smoe" not in sys.modules
    json.dump(results, open(out_file, "w"))
""")


def save_checkpoint(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(backbone_dirs, tokenizers, tmp_path_factory):
    """A saved 4-expert sparse model (lambda_global overridden), its tokenizer and card, plus files not to push."""
    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=4, preset="sparse", lambda_global=1.0)
    folder = save_checkpoint(model, tokenizers["llama"], tmp_path_factory.mktemp("checkpoint"))
    write_model_card(folder, base_model=BASE_MODEL, datasets=["stanfordnlp/SHP", "../data/pairs.jsonl"],
                     eval_results=EVAL_RESULTS, routing_stats=ROUTING_STATS, repo_id=REPO_ID)
    (folder / "results.json").write_text("{}")
    (folder / "trainer").mkdir()
    (folder / "trainer" / "optimizer.pt").write_bytes(b"optimizer state")
    return model.eval(), folder


@pytest.fixture(scope="module")
def pushed(checkpoint, hub_server):
    return push_checkpoint(checkpoint[1], REPO_ID, token=hub_server.token)


def test_push_lands_with_the_weights_in_lfs(checkpoint, pushed, hub_server):
    folder = checkpoint[1]
    repo = hub_server.repos[REPO_ID]
    head = repo.branches["main"]
    assert pushed == f"{hub_server.endpoint}/{REPO_ID}/commit/{head}"
    assert repo.commits[head].message == "Upload hf_smoe reward model (preset sparse, K=4)"
    files = hub_server.files(REPO_ID)
    saved = {path.name for path in folder.iterdir() if path.is_file()} - {"results.json"}
    assert ESSENTIAL_FILES <= saved
    assert set(files) == saved | {".gitattributes"}  # no results.json, nothing from trainer/

    weights = (folder / "model.safetensors").read_bytes()
    oid = hashlib.sha256(weights).hexdigest()
    assert hub_server.lfs_uploads == [oid]
    assert ("storage", "PUT", f"/lfs/{oid}", 200) in hub_server.requests
    assert hub_server.lfs_objects[oid] == weights
    assert files["model.safetensors"].data == (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(weights)}\n".encode())
    for name in saved - {"model.safetensors"}:
        assert files[name].lfs_oid is None and files[name].data == (folder / name).read_bytes(), name

    info = HfApi(endpoint=hub_server.endpoint).model_info(REPO_ID)  # the Hub's reading of the card
    assert info.sha == head
    assert info.card_data.base_model == BASE_MODEL
    assert {result.metric_type: result.metric_value for result in info.card_data.eval_results} == EVAL_RESULTS


@pytest.mark.slow
def test_pushed_model_loads_where_hf_smoe_is_not_installed(checkpoint, pushed, hub_server, tokenizers, tmp_path):
    model, folder = checkpoint
    tokenizer = tokenizers["llama"]
    batch = encode_batch(tokenizer, padding_side="left")
    (tmp_path / "batch.json").write_text(json.dumps({k: v.tolist() for k, v in batch.items()}))
    loaded = subprocess.run([sys.executable, "-I", "-c", LOADER, REPO_ID, str(tmp_path / "batch.json"),
                             str(tmp_path / "out.json")], cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, env=hub_server.client_env(tmp_path / "hf_home"))
    assert loaded.returncode == 0, loaded.stderr
    assert "custom code" not in loaded.stdout + loaded.stderr  # no trust_remote_code question on any load
    results = json.loads((tmp_path / "out.json").read_text())

    with torch.no_grad():
        expected = model(**batch)
    for name in ("logits", "expert_rewards", "routing_weights"):
        torch.testing.assert_close(torch.tensor(results[name]), expected[name], atol=1e-6, rtol=0, msg=name)
    assert results["tokenizer"] == {"chat_template": tokenizer.chat_template,
                                    "input_ids": tokenizer("hello how are you today").input_ids}

    card = results["card"]  # the card's snippet encodes and scores exactly as training does
    prompt, response = (message["content"] for message in card["messages"])
    encoded = encode_pair(tokenizer, prompt, response)
    assert card["input_ids"] == [encoded["input_ids"]]
    with torch.no_grad():
        reference = model(**tokenizer.pad([encoded], return_tensors="pt"))
    torch.testing.assert_close(torch.tensor(card["logits"]), reference.logits, atol=1e-6, rtol=0)
    assert card["steered_weights"] == [[1.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(torch.tensor(card["steered_logits"]), reference.expert_rewards[:, :1], atol=1e-6,
                               rtol=0)

    oid = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert ("storage", "GET", f"/lfs/{oid}", 200) in hub_server.requests  # the weights came through the redirect
    assert hub_server.unhandled == []


def test_private_push_to_a_branch(checkpoint, pushed, hub_server):
    folder = checkpoint[1]
    url = push_checkpoint(folder, "org/smoe-rm-private", token=hub_server.token, private=True, revision="v1",
                          commit_message="v1 weights")
    repo = hub_server.repos["org/smoe-rm-private"]
    assert url == f"{hub_server.endpoint}/org/smoe-rm-private/commit/{repo.branches['v1']}"
    assert set(hub_server.files("org/smoe-rm-private")) == {".gitattributes"}  # main untouched
    assert ESSENTIAL_FILES <= set(hub_server.files("org/smoe-rm-private", "v1"))
    assert repo.commits[repo.branches["v1"]].message == "v1 weights"
    assert len(hub_server.lfs_uploads) == 1  # the weights were already stored: LFS skipped the upload

    api = HfApi(endpoint=hub_server.endpoint)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/smoe-rm-private", token=False)
    assert api.model_info("org/smoe-rm-private", revision="v1", token=hub_server.token).private is True


def test_model_card_metadata_and_text(checkpoint):
    readme = checkpoint[1] / "README.md"
    card = ModelCard.load(readme)
    assert card.data.base_model == BASE_MODEL
    assert card.data.datasets == ["stanfordnlp/SHP"]  # a local file is named in the text, not the metadata
    assert card.data.tags == ["reward-model", "mixture-of-experts", "hf-smoe"]
    assert card.data.library_name == "transformers"
    model_index = metadata_load(readme)["model-index"]
    assert model_index[0]["name"] == "smoe-rm"
    assert model_index[0]["results"] == [{
        "task": {"type": "text-classification", "name": "Reward Modeling"},
        "dataset": {"name": "stanfordnlp/SHP", "type": "stanfordnlp/SHP"},
        "metrics": [{"type": "accuracy", "value": 0.6962, "name": "accuracy"},
                    {"type": "expert_purity", "value": 0.856, "name": "expert_purity"}],
    }]
    for line in ["| Number of experts K (`num_experts`) | 4 |", "| Preset (`preset`) | `sparse`: ",
                 "(`lambda_local`) | 0.5 |", "(`lambda_global`) | 1.0 |", "(`lambda_div`) | 0.5 |",
                 "(`lambda_uniform`) | 0.0 |", f"| Backbone (frozen) | `{BASE_MODEL}` |",
                 "| Training data | stanfordnlp/SHP, pairs.jsonl |", "| accuracy | 0.6962 |",
                 "| routing_entropy | 0.2 |", "| global_entropy | 0.97 |", "| expert_correlation | 0.011 |",
                 "| Expert | expert_usage |", "| 3 | 0.4 |",
                 'AutoModel.from_pretrained("org/smoe-rm", trust_remote_code=True)',
                 "routing_weights=weights", "arXiv:2606.04284"]:
        assert line in card.text, line


def test_card_of_local_names_keeps_them_out_of_the_metadata(checkpoint, tmp_path):
    shutil.copy(checkpoint[1] / "config.json", tmp_path)
    readme = write_model_card(tmp_path, base_model="smollm2-135m-instruct", datasets=["hf_smoe synthetic demo"],
                              eval_results={"accuracy": 0.9}, routing_stats={},
                              dataset_name="hf_smoe synthetic demo (generated)")
    card = ModelCard.load(readme)
    assert card.data.base_model is None and card.data.datasets is None
    assert card.data.eval_results[0].dataset_name == "hf_smoe synthetic demo (generated)"
    assert card.data.eval_results[0].metric_value == 0.9
    assert f'AutoModel.from_pretrained("{tmp_path}", trust_remote_code=True)' in card.text
    assert "No routing statistics were recorded." in card.text


REFUSED_PUSHES = [
    ("missing", r"does not exist"),
    ("empty", r"is not an hf_smoe checkpoint \(no config.json\)"),
    ("bert_config", r"is not an hf_smoe checkpoint \(config.json model_type is 'bert', expected 'smoe_reward'\)"),
    ("no_weights", r"is not an hf_smoe checkpoint \(no model.safetensors\)"),
    ("no_remote_code", r"lacks the remote code that config.json.s auto_map names: configuration_smoe.py, modeling_smoe.py"),
    ("bad_repo_id", r"repo_id: 'org/smoe rm!' is not a valid Hub repo id"),
]


@pytest.mark.parametrize("breakage,match", REFUSED_PUSHES, ids=[breakage for breakage, _ in REFUSED_PUSHES])
def test_push_refuses_what_is_not_ours_before_any_request(checkpoint, hub_server, tmp_path, breakage, match):
    folder, repo_id = tmp_path / "folder", REPO_ID
    if breakage == "bad_repo_id":
        folder, repo_id = checkpoint[1], "org/smoe rm!"
    elif breakage != "missing":
        folder.mkdir()
        names = {"empty": [], "bert_config": [], "no_weights": ["config.json", "configuration_smoe.py", "modeling_smoe.py"],
                 "no_remote_code": ["config.json", "model.safetensors"]}[breakage]
        for name in names:
            shutil.copy(checkpoint[1] / name, folder)
        if breakage == "bert_config":
            (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    requests_before = len(hub_server.requests)
    with pytest.raises(ValueError, match=match) as error:
        push_checkpoint(folder, repo_id, token=hub_server.token)
    assert "\n" not in str(error.value)
    assert len(hub_server.requests) == requests_before


@pytest.mark.parametrize("arguments,match", [
    ({"routing_stats": {"expert_usage": [0.5, 0.5]}}, r"'expert_usage' has 2 values; expected one per expert \(4\)"),
    ({"datasets": []}, r"dataset_name: eval_results need the dataset"),
], ids=["per_expert_length", "no_dataset"])
def test_card_refuses_inconsistent_inputs(checkpoint, tmp_path, arguments, match):
    shutil.copy(checkpoint[1] / "config.json", tmp_path)
    card_inputs = {"base_model": BASE_MODEL, "datasets": ["stanfordnlp/SHP"], "eval_results": EVAL_RESULTS,
                   "routing_stats": ROUTING_STATS, **arguments}
    with pytest.raises(ValueError, match=match):
        write_model_card(tmp_path, **card_inputs)
    assert not (tmp_path / "README.md").exists()


HEADS_LOADER = BLOCK_HF_SMOE + textwrap.dedent("""
    import json
    import torch
    from transformers import AutoModel

    repo_ids, batch_file, out_file = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
    batch = {k: torch.tensor(v) for k, v in json.load(open(batch_file)).items()}
    results = {}
    for repo_id in repo_ids:
        model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            results[repo_id] = model(**batch).logits.tolist()
    assert "hf_smoe" not in sys.modules
    json.dump(results, open(out_file, "w"))
""")


@pytest.mark.slow
def test_heads_only_repos_share_one_backbone_repo_and_load_where_hf_smoe_is_not_installed(
        backbone_dirs, hub_server, tokenizers, tmp_path):
    """Two heads pushed as heads-only checkpoints (the head's weights and a reference to the backbone repo), one
    backbone repo; in a process without hf_smoe each loads with AutoModel and scores like the full model."""
    api = HfApi(endpoint=hub_server.endpoint, token=hub_server.token)
    api.create_repo("org/tiny-backbone", exist_ok=True)
    api.upload_folder(folder_path=backbone_dirs["llama"], repo_id="org/tiny-backbone")
    tokenizer = tokenizers["llama"]
    batch = encode_batch(tokenizer, padding_side="left")
    (tmp_path / "batch.json").write_text(json.dumps({k: v.tolist() for k, v in batch.items()}))
    expected = {}
    for seed, preset in ((0, "sparse"), (1, "micro")):
        torch.manual_seed(seed)
        model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=3, preset=preset)
        folder = tmp_path / preset
        model.save_pretrained(folder, heads_only=True, backbone_source="org/tiny-backbone")
        tokenizer.save_pretrained(folder)
        assert (folder / "model.safetensors").stat().st_size < 100_000  # the head alone
        repo_id = f"org/smoe-{preset}-head"
        push_checkpoint(folder, repo_id, token=hub_server.token)
        with torch.no_grad():
            expected[repo_id] = model.eval()(**batch).logits
    loaded = subprocess.run([sys.executable, "-I", "-c", HEADS_LOADER, ",".join(expected),
                             str(tmp_path / "batch.json"), str(tmp_path / "out.json")], cwd=tmp_path, timeout=300,
                            capture_output=True, text=True, env=hub_server.client_env(tmp_path / "hf_home"))
    assert loaded.returncode == 0, loaded.stderr
    results = json.loads((tmp_path / "out.json").read_text())
    for repo_id, logits in expected.items():
        torch.testing.assert_close(torch.tensor(results[repo_id]), logits, atol=1e-6, rtol=0, msg=repo_id)
    assert not torch.equal(*expected.values())  # two different heads over the one backbone
