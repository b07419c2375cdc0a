"""Configuration of the sparse Mixture-of-Experts reward model (remote code: imports only transformers)."""

import difflib
import inspect
import math
import os

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

# The paper's baselines share one architecture and differ only in routing and in the loss weights.
# `routing` is "router" (input-dependent MLP, Eq. 2) or "static" (one learned K-vector, MaxMin-style);
# `lambda_uniform` is MiCRo's alpha for its uniform prior (MiCRo Eq. 4). This table is the one place
# where a preset becomes numbers; hf_smoe.losses reads it from here. Sparse takes the paper's λ_ls and λ_gb, and
# λ_div = 0.5 instead of its 2.0: chosen on validation of every shared preference set, it is the largest weight at
# which sparse is never below a single head; at 2.0 the diversity term pushes experts off the preference that the
# categories share, and sparse falls below a single head on a general mixture (docs/results.md).
PRESETS = {
    "single": {"routing": "static", "lambda_local": 0.0, "lambda_global": 0.0, "lambda_div": 0.0, "lambda_uniform": 0.0},
    "vanilla": {"routing": "router", "lambda_local": 0.0, "lambda_global": 0.0, "lambda_div": 0.0, "lambda_uniform": 0.0},
    "micro": {"routing": "router", "lambda_local": 0.0, "lambda_global": 0.0, "lambda_div": 0.0, "lambda_uniform": 0.5},
    "sparse": {"routing": "router", "lambda_local": 0.5, "lambda_global": 0.5, "lambda_div": 0.5, "lambda_uniform": 0.0},
    "static": {"routing": "static", "lambda_local": 0.0, "lambda_global": 0.0, "lambda_div": 0.0, "lambda_uniform": 0.0},
}
LAMBDA_NAMES = ("lambda_local", "lambda_global", "lambda_div", "lambda_uniform")
DEFAULT_NUM_EXPERTS = 5
POOLINGS = ("last_token", "mean")
PROMPT_REPRESENTATIONS = ("same_pass", "prompt_pass")
ROUTER_ACTIVATIONS = ("relu", "gelu", "silu", "tanh")


class InputError(ValueError):
    """A failure the user caused and can fix (a bad argument, file, record or checkpoint; a refused overwrite): its
    message names the field, the file or record where there is one, and the fix. `smoe` prints it as one line and
    exits with status 2; any other exception is a bug and keeps its traceback. Defined here because the remote code
    must stay self-contained, and both of its files import this one."""


def check_loss_weights(weights: dict) -> dict:
    """Loss weights as floats; an InputError naming the first one that is not a finite number >= 0 (an infinite
    weight turns the loss, and then every weight of the head, into NaN)."""
    checked = {}
    for name, value in weights.items():
        try:
            checked[name] = float(value)
        except (TypeError, ValueError):
            checked[name] = math.nan
        if isinstance(value, bool) or not 0.0 <= checked[name] < math.inf:  # also refuses NaN
            raise InputError(f"{name}: loss weights must be finite numbers >= 0, got {value!r}.")
    return checked


def is_bidirectional_encoder(backbone_config) -> bool:
    """True for encoders (BERT-like): their hidden state at the last prompt token of a prompt+response pass has
    already seen the response, so the prompt representation needs a prompt-only pass."""
    return backbone_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        backbone_config, "is_decoder", False
    )


class SMoERewardConfig(PretrainedConfig):
    r"""
    Configuration of [`SMoERewardModel`]: a frozen backbone, `num_experts` linear reward heads and a router.

    Args:
        backbone_config (`PretrainedConfig` or `dict`):
            Config of the backbone (any `AutoModel`: causal LM or bidirectional encoder).
        num_experts (`int`, *optional*):
            K, the number of linear expert heads. Defaults to 1 for preset `single`, else 5 (the paper's SHP setting).
        preset (`str`, defaults to `"sparse"`):
            One of `single` (K=1, Bradley-Terry), `vanilla` (MoE, mixture likelihood only), `micro` (MiCRo's uniform
            prior), `sparse` (the paper's full objective, Eq. 7), `static` (input-independent mixture, MaxMin-style).
        lambda_local, lambda_global, lambda_div (`float`, *optional*):
            Weights of local sparsity (Eq. 4), global balance (Eq. 5) and expert diversity (Eq. 6). Default: preset's.
        lambda_uniform (`float`, *optional*):
            Weight (MiCRo's alpha) of MiCRo's uniform prior `mean_x sum_k pi_k log pi_k`. Default: preset's.
        router_hidden_size (`int`, defaults to 128): hidden units of the one-hidden-layer router MLP.
        router_activation (`str`, defaults to `"relu"`): activation between the router's two layers.
        router_dropout (`float`, defaults to 0.2): dropout after the activation, training only.
        router_jitter_noise (`float`, defaults to 0.25):
            Training-only multiplicative noise `U(1-j, 1+j)` on the router input (Mixtral's convention).
        hidden_size (`int`, *optional*):
            Size of the representations the head reads; must equal the backbone's hidden size (defaults to it).
        pooling (`str`, defaults to `"last_token"`):
            `last_token`: response representation = hidden state at the last non-pad token, prompt representation =
            hidden state at the last prompt token (where a reward model's own head reads). `mean`: mean over those
            tokens instead.
        prompt_representation (`str`, *optional*):
            `same_pass`: the prompt representation comes from the prompt+response forward pass (valid for causal
            backbones: MiCRo's choice, no second pass). `prompt_pass`: a separate prompt-only pass (needed for
            bidirectional encoders). Default: chosen from the backbone type.
        assistant_turn_pattern (`list[int]`, *optional*):
            Token ids that open the assistant turn in the chat template. Lets the model find the prompt boundary when
            called without `prompt_lengths`; filled in by `SMoERewardModel.from_backbone` from the tokenizer.
        freeze_backbone (`bool`, defaults to `True`): freeze the backbone (the paper's setting) and keep it in eval mode.
        backbone_source (`dict`, *optional*):
            Set in a heads-only checkpoint (`save_pretrained(..., heads_only=True)`), whose weights file holds only
            the head: where `from_pretrained` loads the backbone's weights from, `{"name_or_path": Hub id or
            folder, "revision": revision or None}`. None for a full checkpoint.
        encoding (`dict`, *optional*):
            How the features the head was trained on were encoded, so that every later use encodes the same way:
            `max_length` (tokens of prompt + response), `truncation` (the rule that cut longer pairs) and `dtype`
            (the backbone's compute dtype). Set when a trained head is saved; None for a model never trained.
    """

    model_type = "smoe_reward"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config=None,
        num_experts=None,
        preset="sparse",
        lambda_local=None,
        lambda_global=None,
        lambda_div=None,
        lambda_uniform=None,
        router_hidden_size=128,
        router_activation="relu",
        router_dropout=0.2,
        router_jitter_noise=0.25,
        hidden_size=None,
        pooling="last_token",
        prompt_representation=None,
        assistant_turn_pattern=None,
        freeze_backbone=True,
        backbone_source=None,
        encoding=None,
        **kwargs,
    ):
        if preset not in PRESETS:
            raise InputError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        if isinstance(backbone_config, dict):
            backbone_config = AutoConfig.for_model(**backbone_config)
        if num_experts is None:
            num_experts = 1 if preset == "single" else DEFAULT_NUM_EXPERTS
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise InputError(f"num_experts: must be an integer >= 1, got {num_experts!r}.")
        if preset == "single" and num_experts != 1:
            raise InputError(f"num_experts: preset 'single' is one reward head; got num_experts={num_experts}. "
                             "Drop num_experts or use preset 'vanilla'.")
        lambdas = {"lambda_local": lambda_local, "lambda_global": lambda_global, "lambda_div": lambda_div,
                   "lambda_uniform": lambda_uniform}
        lambdas = check_loss_weights({name: PRESETS[preset][name] if value is None else value
                                      for name, value in lambdas.items()})
        for name, value in lambdas.items():
            setattr(self, name, value)
        if not 0.0 <= router_dropout < 1.0:
            raise InputError(f"router_dropout: must be in [0, 1), got {router_dropout}.")
        if not 0.0 <= router_jitter_noise < 1.0:
            raise InputError(f"router_jitter_noise: must be in [0, 1), got {router_jitter_noise}.")
        if not isinstance(router_hidden_size, int) or router_hidden_size < 1:
            raise InputError(f"router_hidden_size: must be an integer >= 1, got {router_hidden_size!r}.")
        if router_activation not in ROUTER_ACTIVATIONS:
            raise InputError(f"router_activation: unknown {router_activation!r}; choose one of {ROUTER_ACTIVATIONS}.")
        if pooling not in POOLINGS:
            raise InputError(f"pooling: unknown {pooling!r}; choose one of {POOLINGS}.")
        if prompt_representation is not None and prompt_representation not in PROMPT_REPRESENTATIONS:
            raise InputError(f"prompt_representation: unknown {prompt_representation!r}; "
                             f"choose one of {PROMPT_REPRESENTATIONS}.")
        if backbone_config is not None:
            backbone_hidden = backbone_config.get_text_config().hidden_size
            if hidden_size is None:
                hidden_size = backbone_hidden
            elif hidden_size != backbone_hidden:
                raise InputError(f"hidden_size: {hidden_size} does not match the backbone's hidden size "
                                 f"{backbone_hidden}; drop hidden_size to use the backbone's.")
            if prompt_representation is None:
                prompt_representation = "prompt_pass" if is_bidirectional_encoder(backbone_config) else "same_pass"
            elif prompt_representation == "same_pass" and is_bidirectional_encoder(backbone_config):
                raise InputError("prompt_representation: 'same_pass' reads the prompt from the prompt+response pass, "
                                 "which a bidirectional encoder has already mixed with the response; use "
                                 "'prompt_pass'.")

        self.backbone_config = backbone_config
        self.num_experts = num_experts
        self.preset = preset
        self.router_hidden_size = router_hidden_size
        self.router_activation = router_activation
        self.router_dropout = router_dropout
        self.router_jitter_noise = router_jitter_noise
        self.hidden_size = hidden_size
        self.pooling = pooling
        self.prompt_representation = prompt_representation
        self.assistant_turn_pattern = list(assistant_turn_pattern) if assistant_turn_pattern else None
        self.freeze_backbone = freeze_backbone
        named = isinstance(backbone_source, dict) and backbone_source.get("name_or_path")
        if backbone_source is not None and not named:
            raise InputError(f"backbone_source: expected {{'name_or_path': HUB_ID_OR_FOLDER, 'revision': ...}}, got "
                             f"{backbone_source!r}.")
        self.backbone_source = backbone_source
        if encoding is not None and not (isinstance(encoding, dict) and {"max_length", "dtype"} <= set(encoding)):
            raise InputError(f"encoding: expected {{'max_length': ..., 'truncation': ..., 'dtype': ...}}, got "
                             f"{encoding!r}.")
        self.encoding = encoding
        if backbone_config is not None:  # the parent's init would otherwise reset the backbone's attention choice
            kwargs.setdefault("attn_implementation", getattr(backbone_config, "_attn_implementation", None))
        kwargs["num_labels"] = 1
        kwargs.setdefault("problem_type", "regression")
        kwargs.setdefault("auto_map", {
            "AutoConfig": "configuration_smoe.SMoERewardConfig",
            "AutoModel": "modeling_smoe.SMoERewardModel",
            "AutoModelForSequenceClassification": "modeling_smoe.SMoERewardModel",
        })
        super().__init__(**kwargs)

    def to_dict(self) -> dict:
        """As `PretrainedConfig.to_dict`, with a local backbone path reduced to its folder name: a saved or pushed
        config must not carry the author's file-system layout, which means nothing on another machine."""
        output = super().to_dict()
        backbone = output.get("backbone_config")
        name = backbone.get("_name_or_path") if isinstance(backbone, dict) else None
        if name and (os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)):
            backbone["_name_or_path"] = os.path.basename(os.path.normpath(name))
        return output

    @classmethod
    def check_options(cls, options: dict) -> None:
        """An InputError for a keyword that is no option of this config or of `PretrainedConfig` (a misspelt
        `num_expert=3` would otherwise be stored as an unused attribute, and the model built with the default)."""
        known = set(inspect.signature(cls.__init__).parameters) | set(PretrainedConfig().to_dict())
        unknown = sorted(set(options) - known - {"attn_implementation"})
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see SMoERewardConfig's arguments."
            raise InputError(f"{unknown[0]}: not an option of the model's config; {hint}")

    @property
    def routing(self) -> str:
        """`router` (input-dependent) or `static` (one learned mixture for all inputs)."""
        return PRESETS[self.preset]["routing"]


__all__ = ["InputError", "SMoERewardConfig", "PRESETS", "LAMBDA_NAMES", "check_loss_weights"]
