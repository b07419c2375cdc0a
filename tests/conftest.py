import os

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite compares cached features and generations with direct fp32 forwards to 1e-5; the bf16 path the hardware
# would choose has its own tests (test_features.py, test_loading.py).
os.environ.setdefault("HF_SMOE_DTYPE", "float32")

from hf_smoe import SMoERewardModel, encode_pair  # noqa: E402
from hf_smoe.training.job import save_checkpoint  # noqa: E402
from hf_smoe.features import training_encoding  # noqa: E402
from hf_smoe.data.synthetic import generate_preference_set  # noqa: E402
from hf_smoe.testing import save_tiny_backbone, word_tokenizer  # noqa: E402

BACKBONES = ("llama", "bert")


@pytest.fixture(scope="session")
def backbone_dirs(tmp_path_factory):
    return {kind: save_tiny_backbone(tmp_path_factory.mktemp(kind), kind) for kind in BACKBONES}


@pytest.fixture(scope="session")
def tokenizers():
    return {"llama": word_tokenizer("chatml"), "bert": word_tokenizer("bert")}


@pytest.fixture(params=BACKBONES)
def kind(request):
    return request.param


@pytest.fixture
def model(kind, backbone_dirs):
    torch.manual_seed(1)
    return SMoERewardModel.from_backbone(backbone_dirs[kind], num_experts=4, preset="sparse")


@pytest.fixture
def checkpoint_and_data(backbone_dirs, tokenizers, tmp_path):
    """A saved tiny checkpoint (K = 3) and 40 generated pairs with categories written as jsonl beside it."""
    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=3)
    save_checkpoint(model, tokenizers["llama"], tmp_path / "checkpoint", training_encoding(1024))
    pairs = generate_preference_set(40, seed=2)
    pairs.to_json(tmp_path / "pairs.jsonl")
    return model, tokenizers["llama"], pairs, tmp_path


PAIRS = [
    ("hello how are you today", "good thanks"),
    ([{"role": "user", "content": "what is a cat ?"}, {"role": "assistant", "content": "a kind dog"},
      {"role": "user", "content": "why ?"}], "because the cat is short and kind , yes"),
    ("please code a poem", "sure here is a long poem of the sun and rain"),
]


def encode_batch(tokenizer, pairs=PAIRS, padding_side="right"):
    """A padded batch of encoded pairs, the way a user (or TRL's collator) would build it."""
    tokenizer.padding_side = padding_side
    return tokenizer.pad([encode_pair(tokenizer, p, r) for p, r in pairs], return_tensors="pt")
