"""The paper's controlled experiments on the shared data (Markdown + JSON + command).

table1: category recovery (single, vanilla, micro, sparse; mean ± std over seeds) on HH helpful+harmless, DSP with
its criterion, and the demo set, with routing heatmaps. table8: the λ grid of App. C on one dataset with the
collapse diagnosis of each row. fig2: steering flip rates on DSP (trained with the criterion, tested without).
table5 / fig8: train on HH + WebGPT, adapt the router to each DSP domain from n = 50 (fig8: 5 to 100) pairs;
table13: to 5 Dirichlet(0.3) users over the DSP domains. table4: describe and judge the experts of single, vanilla,
micro, sparse and the random baseline (general mixture K = 20; DSP with the criterion K = 5). fig6: fidelity and
specialization of sparse against K on the general mixture. table14: GRPO post-training of a policy with the
universal and the domain-adapted sparse reward model, and the win rate of one over the other on unseen DSP queries
(App. I; needs hf-smoe[trl]). backbone: reward-tune the backbone's top --layers layers on the train split of hh,
dsp and general (the splits the other experiments' heads train on), one folder each, to pass as their --backbone.
"""

from dataclasses import dataclass, field
from typing import Literal

from ...errors import InputError
from ...training import BackboneTuningTrainingArguments, SMoETrainingArguments
from ..arguments import AT_LEAST_ONE, POSITIVE, SEED, BackboneArguments, GeneratorArguments
from ..parsing import TRAINING_FLAGS_HELP, CommandParser

SIZED_DATASETS = ("hh", "dsp", "demo")
TUNABLE_EXPERIMENTS = ("table1", "fig2", "table5", "fig8", "table13")  # those --tune_layers applies to


@dataclass
class ReproduceArguments:
    experiment: Literal["table1", "table8", "fig2", "table5", "fig8", "table13", "table4", "fig6", "table14",
                        "backbone"] = field(metadata={"help": "the table or figure to reproduce"})
    datasets: list[str] | None = field(default=None, metadata={
        "choices": ["hh", "dsp", "demo", "general"],
        "help": "table1: datasets (default: hh dsp demo); table8: the first one (default: hh); table4: general "
                "and/or dsp (default: both); backbone: the datasets tuned on (default: hh dsp general)"})
    seeds: list[int] | None = field(default=None, metadata={"help": "training seeds (default: 0 1 2; table8, "
                                                                    "fig6, table14, backbone: 0)"})
    size: list[str] = field(default_factory=list, metadata={
        "metavar": "DATASET=N",
        "help": "HH pairs per subset / DSP queries / demo prompts (default: hh=700 dsp=150 demo=360)"})
    epochs: float | None = field(default=None, metadata={
        "help": "epochs of every head (default 3) or, for backbone, of the tuning (default 2)"})
    num_experts: int | None = field(default=None, metadata={
        "metavar": "K",
        "help": "fig2, table5, fig8, table13, table4, table14: K (default: the paper's, 10 for fig2 (§5.2) and 20 "
                "for the personalization and interpretation experiments (§6); table4 on DSP: 5)"})
    measure_on: Literal["test", "validation"] = field(default="test", metadata={
        "help": "table1: 'validation' labels experts on train and measures on validation, for diagnosis without "
                "reading test"})
    tune_layers: int = field(default=0, metadata={
        "metavar": "k",
        "help": "table1, fig2, table5, fig8, table13: train each head jointly with the backbone's top k layers "
                "under its own objective (as `smoe train --tune_layers k`; the layers' rate is "
                "--layers_learning_rate), and measure it on its own tuned features (table1 also probes them); 0: the "
                "backbone stays frozen"})
    k_values: list[int] | None = field(default=None, metadata={
        "metavar": "K", "help": "fig6: the numbers of experts (default: 10 20 30 40 50)"})
    samples_per_stratum: int = field(default=100, metadata={
        "help": "table4, fig6: test prompts judged per expert from its top 10%% and from the rest (App. A: 100)"})
    data_root: str | None = field(default=None, metadata={
        "help": "folder with hh-rlhf/, dsp/ and webgpt/ (default: $HF_SMOE_DATA; required for every experiment but "
                "table1 --datasets demo)"})
    cache_dir: str | None = field(default=None, metadata={"help": "embedding cache root"})
    output_dir: str | None = field(default=None, metadata={"help": "default: outputs/reproduce/EXPERIMENT"})

    def __post_init__(self):
        SEED.check(self, "seeds")
        POSITIVE.check(self, "epochs")
        AT_LEAST_ONE.check(self, "num_experts", "k_values", "samples_per_stratum")
        if self.tune_layers:
            AT_LEAST_ONE.check(self, "tune_layers")
            if self.experiment not in TUNABLE_EXPERIMENTS:
                raise InputError(f"--tune-layers: {self.experiment} trains on the frozen backbone; --tune-layers "
                                 f"applies to {', '.join(TUNABLE_EXPERIMENTS)}.")

    def sizes(self) -> dict:
        """`--size hh=700 dsp=150` as {"hh": 700, "dsp": 150}."""
        sizes = {}
        for item in self.size:
            name, _, value = item.partition("=")
            if name not in SIZED_DATASETS or not value.isdigit() or int(value) < 1:
                raise InputError(f"--size: expected DATASET=N with DATASET one of {', '.join(SIZED_DATASETS)} and "
                                 f"N >= 1, got {item!r}.")
            sizes[name] = int(value)
        return sizes

    def data_root_needed(self) -> bool:
        return not (self.datasets and set(self.datasets) == {"demo"})  # the demo set is generated, not read


@dataclass
class BackboneTuningOptions:
    """`reproduce backbone`: what is tuned and on which pairs."""

    layers: int = field(default=2, metadata={
        "help": "backbone: the top layers tuned (the others are frozen and their output cached)"})
    head_init: Literal["random", "probe"] = field(default="random", metadata={
        "help": "backbone: the tuning head's start (probe: the best linear probe, then tune)"})
    lora_rank: int = field(default=0, metadata={
        "help": "backbone: 0 tunes the full top layers; r > 0 trains rank-r LoRA adapters on them"})
    tuning_pairs: Literal["train", "unsampled"] = field(default="train", metadata={
        "help": "backbone: 'train' tunes on the heads' train split; 'unsampled' adds every pair of the source files "
                "the sample leaves out, except those of a validation or test prompt"})

    def __post_init__(self):
        AT_LEAST_ONE.check(self, "layers")


@dataclass
class AlignmentOptions:
    """`reproduce table14`: the GRPO runs."""

    domain: Literal["academy", "business", "entertainment", "literature"] = field(default="entertainment", metadata={
        "help": "table14: the DSP domain the router is adapted to and the policy is aligned with"})
    steps: int = field(default=100, metadata={
        "help": "table14: GRPO steps per policy (8 completions each: 2 prompts x 4 rollouts)"})
    eval_prompts: int = field(default=100, metadata={
        "help": "table14: unseen DSP queries the two policies answer for the win rates"})
    policy: str | None = field(default=None, metadata={
        "help": "table14: causal LM to post-train (default: the embedded SmolLM2-135M-Instruct)"})

    def __post_init__(self):
        AT_LEAST_ONE.check(self, "steps", "eval_prompts")


class ReproduceParser(CommandParser):
    def passed_on_class(self, reproduce: ReproduceArguments, *others):
        """`reproduce backbone` tunes backbones (`smoe tune-backbone`'s training flags); the others train heads."""
        return BackboneTuningTrainingArguments if reproduce.experiment == "backbone" else SMoETrainingArguments


def make_parser() -> CommandParser:
    return ReproduceParser(
        "reproduce", (ReproduceArguments, BackboneArguments, GeneratorArguments, BackboneTuningOptions,
                      AlignmentOptions), doc=__doc__, positional=("experiment",), passes_on=SMoETrainingArguments,
        epilog=f"{TRAINING_FLAGS_HELP} For backbone: any `smoe tune-backbone` training flag.")


def main(reproduce: ReproduceArguments, backbone: BackboneArguments, generators: GeneratorArguments,
         tuning: BackboneTuningOptions, alignment: AlignmentOptions, training: dict) -> None:
    from ...reproduce import (TUNED_BACKBONE_DATASETS, reproduce_backbone, reproduce_fig2, reproduce_fig6,
                              reproduce_personalization, reproduce_table1, reproduce_table4, reproduce_table8,
                              reproduce_table14, resolve_data_root)

    sizes, seeds = reproduce.sizes(), tuple(reproduce.seeds or ())
    data_root = resolve_data_root(reproduce.data_root) if reproduce.data_root_needed() else None
    output_dir = reproduce.output_dir or f"outputs/reproduce/{reproduce.experiment}"
    if reproduce.experiment == "backbone":
        epochs = {"num_train_epochs": reproduce.epochs} if reproduce.epochs else {}
        reproduce_backbone(datasets=tuple(reproduce.datasets or TUNED_BACKBONE_DATASETS), output_dir=output_dir,
                           backbone=backbone.backbone, sizes=sizes, seed=(seeds or (0,))[0],
                           cache_dir=reproduce.cache_dir, data_root=data_root, training=training | epochs,
                           tuning={"layers": tuning.layers, "head_init": tuning.head_init,
                                   "lora_rank": tuning.lora_rank}, tuning_pairs=tuning.tuning_pairs)
        return
    options = {"backbone": backbone.backbone, "epochs": reproduce.epochs or 3.0, "cache_dir": reproduce.cache_dir,
               "training": training, "data_root": data_root, "output_dir": output_dir}
    num_experts = {"num_experts": reproduce.num_experts} if reproduce.num_experts else {}
    dsp_queries = {"dsp_queries": sizes["dsp"]} if "dsp" in sizes else {}
    if reproduce.experiment == "table1":
        if "general" in (reproduce.datasets or ()):
            raise InputError("--datasets: 'general' has no categories for Table 1; choose from hh, dsp, demo.")
        reproduce_table1(datasets=tuple(reproduce.datasets or ("hh", "dsp", "demo")), seeds=seeds or (0, 1, 2),
                         sizes=sizes, measure_on=reproduce.measure_on, tune_layers=reproduce.tune_layers, **options)
    elif reproduce.experiment in ("table5", "fig8", "table13"):
        reproduce_personalization(n_values=(5, 10, 25, 50, 100) if reproduce.experiment == "fig8" else (50,),
                                  num_users=5 if reproduce.experiment == "table13" else None,
                                  seeds=seeds or (0, 1, 2), tune_layers=reproduce.tune_layers, **options,
                                  **num_experts, **dsp_queries)
    elif reproduce.experiment == "table4":
        reproduce_table4(datasets=tuple(reproduce.datasets or ("general", "dsp")), seeds=seeds or (0, 1, 2),
                         dsp_queries=sizes.get("dsp"), num_experts=reproduce.num_experts,
                         **readers(generators, reproduce), **options)
    elif reproduce.experiment == "fig6":
        reproduce_fig6(k_values=tuple(reproduce.k_values or (10, 20, 30, 40, 50)), seeds=seeds or (0,),
                       **readers(generators, reproduce), **options)
    elif reproduce.experiment == "table14":
        reproduce_table14(domain=alignment.domain, steps=alignment.steps, seed=(seeds or (0,))[0],
                          policy=alignment.policy, eval_prompts=alignment.eval_prompts, **options, **num_experts,
                          **dsp_queries)
    elif reproduce.experiment == "fig2":
        reproduce_fig2(seeds=seeds or (0, 1, 2), size=sizes.get("dsp"), tune_layers=reproduce.tune_layers, **options,
                       **num_experts)
    else:
        dataset = (reproduce.datasets or ["hh"])[0]
        reproduce_table8(dataset=dataset, seeds=seeds or (0,), size=sizes.get(dataset), **options)
    print(f"Written to {output_dir}/")


def readers(generators: GeneratorArguments, reproduce: ReproduceArguments) -> dict:
    """The describer, the judge and the sample they read, as table4 and fig6 take them."""
    return {"generator": generators.generator, "generator_model": generators.generator_model,
            "judge": generators.judge, "judge_model": generators.judge_model,
            "generation_cache": generators.generation_cache,
            "settings": generators.reading(per_stratum=reproduce.samples_per_stratum)}
