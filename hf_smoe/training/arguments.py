"""The argument dataclasses of the training commands, parsed by `HfArgumentParser`: the data and the reward model of
`smoe train` (`DataArguments`, `ModelArguments`) with its `SMoETrainingArguments`, and what `smoe tune-backbone`
tunes (`BackboneTuningArguments`) with its `BackboneTuningTrainingArguments`. Field names, defaults and help are
the commands' flags, so they live together, apart from the code that runs the jobs."""

from dataclasses import asdict, dataclass, field

import torch
from transformers import TrainingArguments

from ..metrics import COLLAPSED_BELOW_GLOBAL_ENTROPY
from ..runtime import DEFAULT_BACKBONE, launched_processes


@dataclass
class DataArguments:
    """The preference data of a run: where it comes from, how much of it, how it is split and where its features are
    cached. `split_seed` draws the subset and the split; the training seed (`--seed`) is separate, so changing it
    keeps the test set."""

    dataset: str = field(metadata={"help": "Hub dataset name or local file/folder"})
    format: str | None = field(default=None, metadata={"help": "data format (default: detected); see "
                                                               "hf_smoe.data.FORMATS"})
    max_pairs: int | None = field(default=None, metadata={"help": "keep a seeded random subset of this size"})
    max_length: int = field(default=1024, metadata={"help": "truncation length of prompt + response"})
    cache_dir: str | None = field(default=None, metadata={"help": "embedding cache root (default: "
                                                                  "$HF_SMOE_CACHE/features)"})
    validation_fraction: float = field(default=0.1, metadata={"help": "share of each category's prompts"})
    test_fraction: float = field(default=0.1, metadata={"help": "share of each category's prompts"})
    split_seed: int = field(default=0, metadata={"help": "seed of the subset and of the train/validation/test split"})


@dataclass
class ModelArguments:
    """The reward model: its backbone, preset and K, and every config field a run may override (None: the preset's
    or the config's default)."""

    backbone: str = field(default=DEFAULT_BACKBONE, metadata={
        "help": f"Hub id or folder of any AutoModel (default: {DEFAULT_BACKBONE}, the embedded copy)"})
    preset: str = field(default="sparse", metadata={"help": "single, vanilla, micro, sparse or static"})
    num_experts: int | None = field(default=None, metadata={
        "help": "K (default: 1 for single; else one per category of the train pairs plus one, at most 50, or 5 "
                "when the pairs carry fewer than two categories)"})
    lambda_local: float | None = field(default=None, metadata={"help": "weight of L_ls (Eq. 4)"})
    lambda_global: float | None = field(default=None, metadata={"help": "weight of L_gb (Eq. 5)"})
    lambda_div: float | None = field(default=None, metadata={"help": "weight of L_div (Eq. 6)"})
    lambda_uniform: float | None = field(default=None, metadata={"help": "weight of MiCRo's uniform prior"})
    router_hidden_size: int | None = field(default=None, metadata={"help": "router MLP width (default 128)"})
    router_activation: str | None = field(default=None, metadata={"help": "relu, gelu, silu or tanh"})
    router_dropout: float | None = field(default=None, metadata={"help": "router dropout (default 0.2)"})
    router_jitter_noise: float | None = field(default=None, metadata={"help": "multiplicative jitter on g(x) "
                                                                              "(default 0.25)"})
    pooling: str | None = field(default=None, metadata={"help": "last_token or mean"})
    prompt_representation: str | None = field(default=None, metadata={"help": "same_pass or prompt_pass"})
    heads_only: bool = field(default=False, metadata={
        "help": "write only the head (kilobytes) and a reference to --backbone (a Hub id, or a folder that stays "
                "where it is) instead of the full model; many heads can share one backbone"})
    backbone_revision: str | None = field(default=None, metadata={
        "help": "with --heads_only: the backbone revision the checkpoint records"})
    tune_layers: int = field(default=0, metadata={
        "help": "k > 0: train the backbone's top k layers with the head under the same objective, from cached "
                "states entering layer L - k (decoder backbones; the checkpoint carries the tuned backbone); 0: "
                "the backbone stays frozen"})
    lora_rank: int = field(default=0, metadata={
        "help": "with --tune_layers: 0 tunes the layers' full weights and final norm; r > 0 trains rank-r LoRA "
                "adapters on their linear maps instead, merged into the weights when saved (needs peft)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator: updates are (alpha / r) B A"})

    def config_overrides(self) -> dict:
        """The config fields this run sets (all but backbone, preset and K, which `from_backbone` takes, and the
        saving and tuning options)."""
        return {name: value for name, value in asdict(self).items() if value is not None
                and name not in ("backbone", "preset", "num_experts", "heads_only", "backbone_revision",
                                 "tune_layers", "lora_rank", "lora_alpha")}


@dataclass
class SMoETrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's defaults (App. A): AdamW, lr 2e-3 for the experts and 5e-4 for the
    router, 5% linear warmup, batch 16, 3 epochs, evaluation every epoch.

    Args:
        router_learning_rate (`float`, defaults to 5e-4): learning rate of the router (`learning_rate` is the
            experts').
        layers_learning_rate (`float`, defaults to 5e-5): learning rate of the backbone's layers when they train
            (`--tune_layers`; a reward model's usual fine-tuning rate).
        collapse_global_entropy (`float`, defaults to 0.5): an evaluation whose global entropy falls below this
            warns that routing has collapsed onto few experts (healthy routing keeps the global entropy high).
        overwrite_output_dir (`bool`, defaults to False): `smoe train` replaces an earlier hf_smoe output in
            `output_dir` only with it (`--overwrite`), and never a folder of files hf_smoe did not write.
    """

    learning_rate: float = 2e-3
    optim: str = "adamw_torch"  # the paper's AdamW, unfused: the optimizer every reported result was trained with
    router_learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of the router."})
    layers_learning_rate: float = field(default=5e-5, metadata={
        "help": "Learning rate of the backbone's trained layers (--tune_layers)."})
    warmup_steps: float = 0.05
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 1024
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (App. A: 3).", "aliases": ["--epochs"]})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace an earlier hf_smoe output in output_dir (never files hf_smoe did not write).",
        "aliases": ["--overwrite"]})
    eval_strategy: str = "epoch"
    save_strategy: str = "no"
    logging_steps: float = 10
    remove_unused_columns: bool = False
    dataloader_pin_memory: bool = False  # batches are a few small vectors
    ddp_find_unused_parameters: bool = False  # the frozen backbone holds no trainable parameter; the head uses all
    collapse_global_entropy: float = field(default=COLLAPSED_BELOW_GLOBAL_ENTROPY,
                                           metadata={"help": "Warn below this global entropy."})

    def __post_init__(self):
        if launched_processes() > 1 and not torch.cuda.is_available():
            self.use_cpu = True  # processes on a CPU-only machine train with DDP over gloo, not as N separate runs
        super().__post_init__()


@dataclass
class BackboneTuningArguments:
    """What is tuned: the backbone, how many of its top layers, and the head's learning rate (the layers take the
    Trainer's `learning_rate`)."""

    backbone: str = field(default=DEFAULT_BACKBONE, metadata={
        "help": f"Hub id or folder of a decoder AutoModel (default: {DEFAULT_BACKBONE}, the embedded copy)"})
    layers: int = field(default=2, metadata={"help": "k: the top layers tuned (the others are frozen and cached)"})
    head_learning_rate: float = field(default=1e-3, metadata={"help": "learning rate of the Bradley-Terry head"})
    pooling: str = field(default="last_token", metadata={"help": "last_token or mean: the representation the head "
                                                                 "reads (that of the reward models trained after)"})
    head_init: str = field(default="random", metadata={
        "help": "random: start the head at random; probe: at the best linear Bradley-Terry probe of the untuned "
                "layers' train states, then tune (LP-FT; lower validation accuracy on HH and DSP here, "
                "docs/results.md)"})
    lora_rank: int = field(default=0, metadata={
        "help": "0: tune the top layers' full weights and final norm; r > 0: train rank-r LoRA adapters (peft) on "
                "every linear map of the top layers instead, merged into the weights when the folder is written "
                "(needs peft: pip install 'hf-smoe[trl]')"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator: updates are (alpha / r) B A"})


@dataclass
class BackboneTuningTrainingArguments(TrainingArguments):
    """`TrainingArguments` with this job's defaults: 2 epochs of batch 8 at lr 5e-5 for the layers (a reward model's
    usual fine-tuning rate), weight decay 0.01 on the weight matrices (`optimizer_groups`), 10% warmup, evaluation
    on validation every epoch, nothing saved by the Trainer (the folder is written once, at the end)."""

    learning_rate: float = 5e-5
    weight_decay: float = 0.01  # the AdamW default this job has always trained with
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    warmup_steps: float = 0.1
    eval_strategy: str = "epoch"
    save_strategy: str = "no"
    logging_steps: float = 10
    remove_unused_columns: bool = False
    dataloader_pin_memory: bool = torch.cuda.is_available()  # state batches are large; page-locked only on CUDA
    report_to: str = "none"
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace an earlier tuned backbone in output_dir.", "aliases": ["--overwrite"]})
