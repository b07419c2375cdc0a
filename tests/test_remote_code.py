"""A saved checkpoint loads through the Auto classes in a process that cannot import hf_smoe, offline."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import encode_batch

from hf_smoe import SMoERewardModel

# Prepended to every script run as "a user without hf_smoe": any import of hf_smoe fails.
BLOCK_HF_SMOE = textwrap.dedent("""
    import importlib.abc, sys

    class BlockHfSmoe(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_smoe" or name.startswith("hf_smoe."):
                raise ImportError("hf_smoe is deliberately not importable here")

    sys.meta_path.insert(0, BlockHfSmoe())
""")

LOADER = BLOCK_HF_SMOE + textwrap.dedent("""
    import json
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    checkpoint, batch_file, out_file = sys.argv[1:]
    batch = {k: torch.tensor(v) for k, v in json.load(open(batch_file)).items()}
    results = {}
    for auto in (AutoModel, AutoModelForSequenceClassification):
        model = auto.from_pretrained(checkpoint, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert "hf_smoe" not in sys.modules
        with torch.no_grad():
            out = model(**batch)
            found = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        results[auto.__name__] = {k: out[k].tolist() for k in ("logits", "expert_rewards", "routing_weights")}
        results[auto.__name__]["found_logits"] = found.logits.tolist()
    json.dump(results, open(out_file, "w"))
""")


@pytest.mark.slow
@pytest.mark.parametrize("kind,preset", [("llama", "sparse"), ("bert", "micro")])
def test_checkpoint_loads_without_hf_smoe(kind, preset, backbone_dirs, tokenizers, tmp_path):
    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(backbone_dirs[kind], num_experts=3, preset=preset)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    assert sorted(os.listdir(checkpoint)) == ["config.json", "configuration_smoe.py", "model.safetensors",
                                              "modeling_smoe.py"]  # no pickle anywhere
    batch = encode_batch(tokenizers[kind], padding_side="left")
    (tmp_path / "batch.json").write_text(json.dumps({k: v.tolist() for k, v in batch.items()}))
    with torch.no_grad():
        expected = model(**batch)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    subprocess.run([sys.executable, "-I", "-c", LOADER, str(checkpoint), str(tmp_path / "batch.json"),
                    str(tmp_path / "out.json")], check=True, cwd=tmp_path, env=env, timeout=300)
    results = json.loads((tmp_path / "out.json").read_text())
    for auto_name, outputs in results.items():
        for name in ("logits", "expert_rewards", "routing_weights"):
            torch.testing.assert_close(torch.tensor(outputs[name]), expected[name], atol=1e-6, rtol=0,
                                       msg=f"{auto_name}.{name}")
        torch.testing.assert_close(torch.tensor(outputs["found_logits"]), expected.logits, atol=1e-6, rtol=0)


def test_loading_registers_with_auto_classes_in_process(backbone_dirs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=2)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)  # no trust_remote_code: hf_smoe registered
    assert isinstance(loaded, SMoERewardModel)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, atol=0, rtol=0)


def test_a_heads_only_checkpoint_holds_the_head_and_reloads_equal(backbone_dirs, tokenizers, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    from hf_smoe.modeling.configuration_smoe import InputError

    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=3).eval()
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "head", heads_only=True)  # the backbone folder it was built from
    head = load_file(tmp_path / "head" / "model.safetensors")
    assert set(head) == {f"head.{name}" for name in model.head.state_dict()}
    assert json.loads((tmp_path / "head" / "config.json").read_text())["backbone_source"] == {
        "name_or_path": backbone_dirs["llama"], "revision": None}
    assert model.config.backbone_source is None  # saving heads-only leaves the model's own config as it was
    batch = encode_batch(tokenizers["llama"])
    with torch.no_grad():
        for folder in ("full", "head"):
            loaded = AutoModel.from_pretrained(tmp_path / folder)
            torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    config = type(model.backbone.config).from_dict(model.backbone.config.to_dict() | {"_name_or_path": ""})
    nameless = SMoERewardModel(model.config, backbone=type(model.backbone)(config))  # built from a config only
    with pytest.raises(InputError, match="backbone_source: a heads-only checkpoint names its backbone"):
        nameless.save_pretrained(tmp_path / "nameless", heads_only=True)
