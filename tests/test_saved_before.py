"""Outputs written by an earlier hf_smoe keep working: a checkpoint trained by `smoe train`, its embedding cache and
a router written by `smoe adapt` (tests/fixtures/legacy, made by its make.py with the code named in its README)
load and give the rewards that code gave."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer

from hf_smoe.evaluation import head_outputs
from hf_smoe.features import EmbeddingCache, as_training_features
from hf_smoe.personalization import load_router
from hf_smoe.rewards import smoe_reward
from hf_smoe.runtime import load_checkpoint

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
MAX_LENGTH = 96  # what make.py trained and embedded with
TOLERANCE = 1e-6  # fp32 on a 32-wide model: the same kernels give the same bits; another CPU may differ in the last


REMOTE_CODE = Path(__file__).parents[1] / "modeling"


@pytest.fixture
def legacy(tmp_path):
    """A writable copy (reading the cache may add files beside the stored ones) and what the earlier code gave. The
    checkpoint was saved with remote code byte-identical to today's `modeling/`; the fixture leaves that second copy
    out and puts it back here, as `save_pretrained` wrote it."""
    folder = shutil.copytree(LEGACY, tmp_path / "legacy")
    for name in ("configuration_smoe.py", "modeling_smoe.py"):
        shutil.copy(REMOTE_CODE / name, folder / "checkpoint" / name)
    return folder, json.loads((folder / "expected.json").read_text())


def pairs_of(folder: Path) -> Dataset:
    return Dataset.from_json(str(folder / "pairs.jsonl"))


def test_the_old_checkpoint_and_router_give_the_old_rewards(legacy):
    folder, expected = legacy
    pairs = pairs_of(folder)
    count = len(expected["smoe_reward"]["rewards"])
    reward = smoe_reward(str(folder / "checkpoint"), routers={"alice": str(folder / "router.safetensors")},
                         max_length=MAX_LENGTH)
    rewards = reward(prompts=pairs["prompt"][:count], completions=pairs["chosen"][:count],
                     user=expected["smoe_reward"]["users"])
    assert torch.allclose(torch.tensor(rewards), torch.tensor(expected["smoe_reward"]["rewards"]), atol=TOLERANCE,
                          rtol=0)
    # the router file was read, not ignored: the same sample scores otherwise under the model's own router
    own = reward(prompts=pairs["prompt"][1:2], completions=pairs["chosen"][1:2], user=[None])
    assert expected["smoe_reward"]["users"][1] == "alice" and own[0] != pytest.approx(rewards[1], abs=1e-4)


def test_the_old_checkpoint_loads_with_automodel_as_the_library_loads_it(legacy):
    folder, _ = legacy
    model, tokenizer = load_checkpoint(folder / "checkpoint")
    auto = AutoModel.from_pretrained(folder / "checkpoint", trust_remote_code=True).eval()
    assert isinstance(AutoTokenizer.from_pretrained(folder / "checkpoint"), type(tokenizer))
    state, auto_state = model.state_dict(), auto.state_dict()
    assert state.keys() == auto_state.keys() and all(torch.equal(state[name], auto_state[name]) for name in state)
    router = load_router(folder / "router.safetensors", model)
    assert router(torch.zeros(1, model.config.backbone_config.hidden_size)).shape == (1, model.config.num_experts)


def test_the_old_cache_is_found_and_read_without_running_the_backbone(legacy, monkeypatch):
    folder, expected = legacy
    model, tokenizer = load_checkpoint(folder / "checkpoint")
    cache = EmbeddingCache(model, tokenizer, cache_dir=folder / "cache", max_length=MAX_LENGTH)
    assert cache.directory.name == expected["cache_directory"]

    def no_forward(batch):
        raise AssertionError("the backbone ran: the old cache was not found")

    monkeypatch.setattr(cache, "_forward", no_forward)
    outputs = head_outputs(model.head, as_training_features(cache.pair_features(pairs_of(folder))))
    for name, values in expected["cached_features"].items():
        assert torch.allclose(outputs[name], torch.tensor(values), atol=TOLERANCE, rtol=0), name
