"""SMoERewardConfig: presets, defaults, serialisation, and one clear ValueError per bad field."""

import pytest
from transformers import AutoConfig, BertConfig, LlamaConfig

from hf_smoe import SMoERewardConfig

LLAMA = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
BERT = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


def test_defaults_follow_the_paper_but_the_diversity_weight():
    config = SMoERewardConfig(backbone_config=LLAMA)
    assert (config.num_experts, config.preset, config.router_hidden_size) == (5, "sparse", 128)
    assert (config.router_dropout, config.router_jitter_noise) == (0.2, 0.25)
    assert (config.lambda_local, config.lambda_global, config.lambda_div, config.lambda_uniform) == (0.5, 0.5, 0.5, 0.0)
    assert config.num_labels == 1 and config.hidden_size == 32
    assert config.prompt_representation == "same_pass" and config.pooling == "last_token"
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"}


def test_presets_and_overrides():
    assert SMoERewardConfig(backbone_config=LLAMA, preset="single").num_experts == 1
    assert SMoERewardConfig(backbone_config=LLAMA, preset="static").routing == "static"
    assert SMoERewardConfig(backbone_config=LLAMA, preset="micro").lambda_uniform == 0.5
    grid = SMoERewardConfig(backbone_config=LLAMA, preset="sparse", lambda_global=1.0, lambda_div=0)
    assert (grid.lambda_local, grid.lambda_global, grid.lambda_div) == (0.5, 1.0, 0.0)


def test_encoders_get_a_prompt_only_pass():
    assert SMoERewardConfig(backbone_config=BERT).prompt_representation == "prompt_pass"
    with pytest.raises(ValueError, match="prompt_representation"):
        SMoERewardConfig(backbone_config=BERT, prompt_representation="same_pass")


def test_round_trip_keeps_the_backbone_config(tmp_path):
    config = SMoERewardConfig(backbone_config=LLAMA, num_experts=3, preset="micro", assistant_turn_pattern=[5, 4, 7])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SMoERewardConfig)
    assert isinstance(loaded.backbone_config, LlamaConfig) and loaded.backbone_config.hidden_size == 32
    assert (loaded.num_experts, loaded.preset, loaded.assistant_turn_pattern) == (3, "micro", [5, 4, 7])
    assert loaded.lambda_uniform == 0.5
    assert SMoERewardConfig().backbone_config is None  # transformers builds a default config to diff against


@pytest.mark.parametrize("overrides,field", [
    ({"num_experts": 0}, "num_experts"),
    ({"num_experts": -3}, "num_experts"),
    ({"num_experts": 2.5}, "num_experts"),
    ({"preset": "single", "num_experts": 4}, "num_experts"),
    ({"lambda_local": -0.1}, "lambda_local"),
    ({"lambda_global": -1}, "lambda_global"),
    ({"lambda_div": float("nan")}, "lambda_div"),
    ({"lambda_uniform": -0.5}, "lambda_uniform"),
    ({"preset": "sparce"}, "preset"),
    ({"hidden_size": 64}, "hidden_size"),
    ({"router_dropout": 1.5}, "router_dropout"),
    ({"router_jitter_noise": -0.1}, "router_jitter_noise"),
    ({"router_activation": "swish2"}, "router_activation"),
    ({"pooling": "cls"}, "pooling"),
])
def test_bad_configs_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        SMoERewardConfig(backbone_config=LLAMA, **overrides)
