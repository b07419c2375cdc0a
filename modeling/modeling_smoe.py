"""Sparse Mixture-of-Experts reward model (remote code: imports only torch and transformers).

A frozen backbone gives a response representation h(x, y) (last non-pad token) and a prompt representation g(x)
(last prompt token of the same pass for causal backbones, a prompt-only pass for encoders). K linear experts score
h; a router turns g into mixture weights pi(x); the reward is sum_k pi_k(x) r_k(x, y) (the paper's Eq. 2).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_utils import load_state_dict
from transformers.utils import ModelOutput, cached_file

from .configuration_smoe import InputError, SMoERewardConfig

# Used when a tokenizer has no chat template: the HH-RLHF transcript convention, wrapped in the tokenizer's own
# sequence markers ([CLS] ... [SEP] for BERT, <s> ... </s> for Llama-style, nothing for GPT-2).
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else (cls_token if cls_token else '') }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}Human: {% elif message['role'] == 'assistant' %}Assistant: "
    "{% else %}{{ message['role'] | capitalize }}: {% endif %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token if eos_token else (sep_token if sep_token else '') }}"
    "{% else %}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def chat_template_for(tokenizer) -> str:
    """The tokenizer's own chat template, or the documented plain-text fallback `PLAIN_CHAT_TEMPLATE`."""
    return tokenizer.chat_template if getattr(tokenizer, "chat_template", None) else PLAIN_CHAT_TEMPLATE


def render_ids(tokenizer, messages, add_generation_prompt) -> list:
    """Token ids of `messages` rendered through `chat_template_for(tokenizer)`."""
    return list(tokenizer.apply_chat_template(
        messages, chat_template=chat_template_for(tokenizer), add_generation_prompt=add_generation_prompt,
        tokenize=True, return_dict=False,
    ))


def assistant_turn_pattern(tokenizer) -> list:
    """Token ids that open the assistant turn: the longest common suffix of two rendered generation prompts whose
    user messages differ. For ChatML this is `<|im_end|>\\n<|im_start|>assistant\\n`."""
    first = render_ids(tokenizer, [{"role": "user", "content": "Hello."}], add_generation_prompt=True)
    second = render_ids(tokenizer, [{"role": "user", "content": "How are you today?"}], add_generation_prompt=True)
    length = 0
    while length < min(len(first), len(second)) and first[-1 - length] == second[-1 - length]:
        length += 1
    return first[len(first) - length:]


@dataclass
class SMoERewardOutput(ModelOutput):
    """
    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, 1)`): the mixture reward r(x, y) (Eq. 2).
        expert_rewards (`torch.FloatTensor` of shape `(batch_size, num_experts)`): r_k(x, y) for every expert.
        routing_weights (`torch.FloatTensor` of shape `(batch_size, num_experts)`): pi(x), or the override passed in.
        prompt_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): g(x), the router's input.
        response_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): h(x, y), the experts' input.
    """

    logits: torch.FloatTensor | None = None
    expert_rewards: torch.FloatTensor | None = None
    routing_weights: torch.FloatTensor | None = None
    prompt_embeddings: torch.FloatTensor | None = None
    response_embeddings: torch.FloatTensor | None = None


def mixture_reward(routing_weights: torch.Tensor, expert_rewards: torch.Tensor) -> torch.Tensor:
    """Eq. 2: r(x, y) = sum_k pi_k(x) r_k(x, y); (B, K) x (B, K) -> (B, 1)."""
    if routing_weights.shape[-1] != expert_rewards.shape[-1]:
        raise InputError(f"routing_weights: {routing_weights.shape[-1]} weights for {expert_rewards.shape[-1]} "
                         "experts; give one weight per expert.")
    return (routing_weights * expert_rewards).sum(dim=-1, keepdim=True)


class SMoERouter(nn.Module):
    """pi(x) = softmax(MLP(g(x))), with training-only multiplicative jitter on g(x) and dropout in the MLP."""

    def __init__(self, config: SMoERewardConfig):
        super().__init__()
        self.jitter_noise = config.router_jitter_noise
        self.hidden = nn.Linear(config.hidden_size, config.router_hidden_size)
        self.activation = ACT2FN[config.router_activation]
        self.dropout = nn.Dropout(config.router_dropout)
        self.output = nn.Linear(config.router_hidden_size, config.num_experts)

    def forward(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        if self.training and self.jitter_noise > 0:
            noise = torch.empty_like(prompt_embeddings).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            prompt_embeddings = prompt_embeddings * noise
        logits = self.output(self.dropout(self.activation(self.hidden(prompt_embeddings))))
        return logits.softmax(dim=-1)


class SMoEStaticRouter(nn.Module):
    """One learned mixture for every input (MaxMin-RLHF's static weights; with K=1, the single reward model)."""

    def __init__(self, config: SMoERewardConfig):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(config.num_experts))

    def forward(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        return self.logits.softmax(dim=-1).expand(prompt_embeddings.shape[0], -1)


class SMoERewardHead(nn.Module):
    """Router + K linear experts. Works on representations alone, so training and analysis can run on cached
    features without the backbone."""

    def __init__(self, config: SMoERewardConfig):
        super().__init__()
        self.router = SMoEStaticRouter(config) if config.routing == "static" else SMoERouter(config)
        self.experts = nn.Linear(config.hidden_size, config.num_experts)  # row k is (w_k, b_k)

    def forward(self, prompt_embeddings, response_embeddings, routing_weights=None):
        """Returns (logits (B, 1), expert_rewards (B, K), routing_weights (B, K)). `response_embeddings` may also be
        (B, R, H), R responses to each prompt (a preference pair: R = 2), routed once: logits (B, R, 1) and
        expert_rewards (B, R, K)."""
        expert_rewards = self.experts(response_embeddings)
        if routing_weights is None:
            routing_weights = self.router(prompt_embeddings)
        else:
            first = expert_rewards[:, 0] if expert_rewards.dim() == 3 else expert_rewards  # (B, K)
            routing_weights = check_routing_weights(routing_weights, first)
        per_response = routing_weights.unsqueeze(1) if expert_rewards.dim() == 3 else routing_weights
        return mixture_reward(per_response, expert_rewards), expert_rewards, routing_weights


def check_routing_weights(routing_weights, expert_rewards: torch.Tensor) -> torch.Tensor:
    """A (K,) or (B, K) override, broadcast to (B, K); used as given (steering and ablation need raw weights)."""
    routing_weights = torch.as_tensor(routing_weights, dtype=expert_rewards.dtype, device=expert_rewards.device)
    batch_size, num_experts = expert_rewards.shape
    if routing_weights.dim() == 1:
        routing_weights = routing_weights.expand(batch_size, -1)
    if routing_weights.shape != (batch_size, num_experts):
        raise InputError(f"routing_weights: expected shape ({num_experts},) or ({batch_size}, {num_experts}), "
                         f"got {tuple(routing_weights.shape)}.")
    if not torch.isfinite(routing_weights).all():
        raise InputError("routing_weights: contains NaN or infinite values.")
    return routing_weights


def right_align(attention_mask: torch.Tensor, *tensors: torch.Tensor):
    """Moves every row's tokens to the front (right padding), keeping their order, so that positions, and with them
    every hidden state, are the same whichever side the caller padded on."""
    order = torch.sort(attention_mask, dim=1, descending=True, stable=True).indices
    return [None if t is None else t.gather(1, order) for t in (attention_mask, *tensors)]


def find_prompt_lengths(input_ids: torch.Tensor, lengths: torch.Tensor, pattern: list) -> torch.Tensor:
    """Prompt length of each right-aligned row: the end of the last occurrence of `pattern` (the assistant-turn
    opener) that still has a response token after it. Returns -1 for rows without one."""
    width = len(pattern)
    if input_ids.shape[1] <= width:
        return torch.full_like(lengths, -1)
    windows = input_ids.unfold(1, width, 1)  # (B, T - width + 1, width)
    matches = (windows == torch.tensor(pattern, device=input_ids.device)).all(dim=-1)
    ends = torch.arange(width, input_ids.shape[1] + 1, device=input_ids.device)  # prompt length if it matched here
    matches &= ends.unsqueeze(0) < lengths.unsqueeze(1)
    return torch.where(matches, ends, torch.full_like(ends, -1)).amax(dim=1)


def pool(hidden_states: torch.Tensor, lengths: torch.Tensor, pooling: str) -> torch.Tensor:
    """Representation of the first `lengths[b]` tokens of each right-aligned row: its last token or its mean."""
    if pooling == "last_token":
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), lengths - 1]
    mask = (torch.arange(hidden_states.shape[1], device=hidden_states.device) < lengths.unsqueeze(1))
    mask = mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(dim=1) / lengths.unsqueeze(1).to(hidden_states.dtype)


class SMoEPreTrainedModel(PreTrainedModel):
    config_class = SMoERewardConfig
    base_model_prefix = "smoe"
    _keep_in_fp32_modules_strict = ["head"]  # the router's softmax and K small heads are cheap; keep them exact
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    supports_gradient_checkpointing = True  # the backbone's layers checkpoint (TRL turns it on by default)

    def _init_weights(self, module):
        if isinstance(module, SMoEStaticRouter):
            module.logits.data.zero_()  # start from the uniform mixture
        else:
            super()._init_weights(module)


class SMoERewardModel(SMoEPreTrainedModel):
    """Backbone + `SMoERewardHead`. `logits` is the mixture reward, so the model drops in wherever a sequence-
    classification reward model is expected (TRL, RewardBench, pipelines)."""

    def __init__(self, config: SMoERewardConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if config.backbone_config is None:
            raise InputError("backbone_config: required; build the model with SMoERewardModel.from_backbone(name).")
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone_config)
        self.head = SMoERewardHead(config)
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.post_init()

    @classmethod
    def from_backbone(cls, name_or_path, num_experts=None, preset="sparse", tokenizer=None, backbone_kwargs=None,
                      **config_overrides):
        """A fresh model (experts and router newly initialised) around pretrained backbone weights.

        `name_or_path` is a Hub id or folder (loaded with `AutoModel.from_pretrained(name_or_path, **backbone_kwargs)`)
        or an already-loaded backbone model. The tokenizer (loaded from the same place unless given) supplies the
        assistant-turn pattern stored in the config."""
        SMoERewardConfig.check_options(config_overrides)
        if isinstance(name_or_path, PreTrainedModel):
            backbone, name_or_path = name_or_path, name_or_path.name_or_path
        else:
            backbone = AutoModel.from_pretrained(name_or_path, **(backbone_kwargs or {}))
        if tokenizer is None and name_or_path:
            try:
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            except (OSError, ValueError):
                tokenizer = None  # callers must then pass prompt_lengths
        if tokenizer is not None and "assistant_turn_pattern" not in config_overrides:
            config_overrides["assistant_turn_pattern"] = assistant_turn_pattern(tokenizer)
        config = SMoERewardConfig(backbone_config=backbone.config, num_experts=num_experts, preset=preset,
                                  **config_overrides)
        return cls(config, backbone=backbone).eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """As `PreTrainedModel.from_pretrained`; a heads-only checkpoint (`config.backbone_source` set) loads its
        backbone from the Hub id or folder it names and its head from its own small weights file."""
        hub = {key: kwargs[key] for key in ("cache_dir", "force_download", "local_files_only", "token", "revision",
                                            "subfolder") if key in kwargs}
        if config is None:
            config = SMoERewardConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        if config.backbone_source is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        source = config.backbone_source
        shared = {key: value for key, value in hub.items() if key not in ("revision", "subfolder")}
        backbone = AutoModel.from_pretrained(source["name_or_path"], revision=source.get("revision"),
                                             **({"dtype": kwargs["dtype"]} if "dtype" in kwargs else {}), **shared)
        model = cls(config, backbone=backbone)
        head = load_state_dict(cached_file(pretrained_model_name_or_path, "model.safetensors", **hub))
        model.head.load_state_dict({name.removeprefix("head."): tensor for name, tensor in head.items()})
        return model.eval()

    def save_pretrained(self, save_directory, *args, heads_only: bool = False, backbone_source=None,
                        backbone_revision=None, **kwargs):
        """As `PreTrainedModel.save_pretrained`. `heads_only=True` writes the head's weights alone (kilobytes) and,
        in the config, where the backbone comes from: `backbone_source` (a Hub id, or a folder that stays where it
        is; default: the one the model was built from), at `backbone_revision`. Many heads can then share one
        backbone repo; `from_pretrained` (this file, so also where hf_smoe is not installed) reassembles them."""
        if not heads_only:
            return super().save_pretrained(save_directory, *args, **kwargs)
        source = backbone_source or (self.config.backbone_source or {}).get("name_or_path") \
            or self.backbone.name_or_path
        if not source:
            raise InputError("backbone_source: a heads-only checkpoint names its backbone's Hub id or folder, and "
                             "this backbone has none; pass save_pretrained(..., backbone_source=HUB_ID).")
        previous, self.config.backbone_source = self.config.backbone_source, {"name_or_path": str(source),
                                                                               "revision": backbone_revision}
        try:
            head = {f"head.{name}": tensor for name, tensor in self.head.state_dict().items()}
            return super().save_pretrained(save_directory, *args, state_dict=head, **kwargs)
        finally:
            self.config.backbone_source = previous

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    def train(self, mode: bool = True):
        """A frozen backbone stays in eval mode (no dropout), so its features match the embedding cache's, and without
        gradients. Re-applied here because `from_pretrained` materialises fresh parameters (which require grad) after
        `__init__` froze them, then calls `eval()`: every load path ends here."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
            self.backbone.requires_grad_(False)
        return self

    def forward(self, input_ids=None, attention_mask=None, prompt_lengths=None, routing_weights=None,
                token_type_ids=None, prompt_embeddings=None, response_embeddings=None, **kwargs):
        """
        Args:
            input_ids, attention_mask: chat-template(x) + y, padded on either side.
            prompt_lengths (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Number of tokens of chat-template(x) including the assistant-turn opener, counted over non-pad
                tokens. Found from `config.assistant_turn_pattern` when omitted.
            routing_weights (`torch.FloatTensor` of shape `(num_experts,)` or `(batch_size, num_experts)`,
                *optional*): replaces the router's weights (steering, personalization, ablation).
            prompt_embeddings, response_embeddings (*optional*, instead of `input_ids`): the backbone's
                representations, e.g. from an embedding cache: g(x) `(batch_size, hidden_size)` and h(x, y)
                `(batch_size, hidden_size)`, or `(batch_size, R, hidden_size)` for R responses to each prompt.
            kwargs: accepted and ignored, so that callers passing generic flags (TRL, pipelines) work.
        """
        if input_ids is not None:
            prompt_embeddings, response_embeddings = self.embed(input_ids, attention_mask, prompt_lengths,
                                                                token_type_ids)
        elif prompt_embeddings is None or response_embeddings is None:
            raise InputError("input_ids: required, or prompt_embeddings and response_embeddings (the backbone's "
                             "representations, e.g. cached).")
        head_dtype = self.head.experts.weight.dtype
        logits, expert_rewards, routing_weights = self.head(
            prompt_embeddings.to(head_dtype), response_embeddings.to(head_dtype), routing_weights)
        return SMoERewardOutput(logits=logits, expert_rewards=expert_rewards, routing_weights=routing_weights,
                                prompt_embeddings=prompt_embeddings, response_embeddings=response_embeddings)

    def embed(self, input_ids, attention_mask=None, prompt_lengths=None, token_type_ids=None):
        """The backbone half of `forward`: (prompt representations g(x), response representations h(x, y))."""
        if input_ids.dim() != 2:
            raise InputError(f"input_ids: expected a (batch, length) tensor, got shape {tuple(input_ids.shape)}; "
                             "batch a single sequence with input_ids.unsqueeze(0) (tokenizer(..., return_tensors='pt')"
                             " does).")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise InputError(f"attention_mask: shape {tuple(attention_mask.shape)} differs from input_ids' "
                             f"{tuple(input_ids.shape)}; pass the mask the tokenizer returned with them.")
        attention_mask, input_ids, token_type_ids = right_align(attention_mask.long(), input_ids, token_type_ids)
        lengths = attention_mask.sum(dim=1)
        if (lengths == 0).any():
            raise InputError("attention_mask: a row has no tokens; every row needs a prompt and a response.")
        prompt_lengths = self._prompt_lengths(input_ids, lengths, prompt_lengths)

        backbone_trainable = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and backbone_trainable):
            hidden_states = self._encode(input_ids, attention_mask, token_type_ids)
            response_embeddings = pool(hidden_states, lengths, self.config.pooling)
            if self.config.prompt_representation == "prompt_pass":
                width = int(prompt_lengths.max())
                prompt_mask = (torch.arange(width, device=input_ids.device) < prompt_lengths.unsqueeze(1)).long()
                prompt_types = None if token_type_ids is None else token_type_ids[:, :width]
                prompt_states = self._encode(input_ids[:, :width], prompt_mask, prompt_types)
            else:
                prompt_states = hidden_states
            prompt_embeddings = pool(prompt_states, prompt_lengths, self.config.pooling)
        return prompt_embeddings, response_embeddings

    def _encode(self, input_ids, attention_mask, token_type_ids):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.backbone(**inputs).last_hidden_state

    def _prompt_lengths(self, input_ids, lengths, prompt_lengths) -> torch.Tensor:
        if prompt_lengths is None:
            pattern = self.config.assistant_turn_pattern
            if not pattern:
                raise InputError("prompt_lengths: not given, and config.assistant_turn_pattern is unset, so the "
                                 "prompt boundary cannot be found. Pass prompt_lengths, or build the model with "
                                 "from_backbone(..., tokenizer=tokenizer).")
            prompt_lengths = find_prompt_lengths(input_ids, lengths, pattern)
            if (prompt_lengths < 0).any():
                rows = (prompt_lengths < 0).nonzero().flatten().tolist()
                raise InputError(f"input_ids: rows {rows} do not contain the assistant-turn pattern "
                                 f"{pattern} followed by a response; encode pairs with the model's chat template "
                                 "(hf_smoe.encode_pair) or pass prompt_lengths.")
            return prompt_lengths
        prompt_lengths = torch.as_tensor(prompt_lengths, device=input_ids.device).long().reshape(-1)
        if prompt_lengths.shape[0] != input_ids.shape[0]:
            raise InputError(f"prompt_lengths: {prompt_lengths.shape[0]} values for a batch of {input_ids.shape[0]}.")
        if ((prompt_lengths < 1) | (prompt_lengths >= lengths)).any():
            raise InputError("prompt_lengths: each must be >= 1 and leave at least one response token "
                             "(< the row's number of non-pad tokens).")
        return prompt_lengths


__all__ = ["SMoERewardModel", "SMoERewardOutput", "SMoEPreTrainedModel", "SMoERewardHead", "mixture_reward"]
