"""The `smoe` command line. Each subcommand is a thin shell over a library function."""

import argparse
import errno
import json
import math
import sys
import warnings
from pathlib import Path

from .loading import DEFAULT_BACKBONE, first_line
from .modeling.configuration_smoe import InputError


def number_type(kind, accepts, expected: str):
    """An argparse type: a `kind` number for which `accepts(value)` holds; `expected` says which, in the error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value
    return parse


at_least_one = number_type(int, lambda value: value >= 1, "an integer >= 1")  # pair counts, lengths, K
positive_number = number_type(float, lambda value: math.isfinite(value) and value > 0, "a finite number > 0")
seed_value = number_type(int, lambda value: 0 <= value < 2**32, "an integer between 0 and 2**32 - 1")


def add_overwrite_argument(parser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} if it exists (only ever an earlier hf_smoe output)")


def add_data_arguments(parser) -> None:
    parser.add_argument("--dataset", required=True, help="Hub dataset name or local file/folder")
    parser.add_argument("--format", default=None, help="data format (default: detected); see hf_smoe.data.FORMATS")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE,
                        help=f"Hub id or folder of any AutoModel (default: {DEFAULT_BACKBONE}, the embedded copy)")
    parser.add_argument("--max-pairs", type=at_least_one, default=None, help="keep a seeded random subset of this size")
    parser.add_argument("--max-length", type=at_least_one, default=1024, help="truncation length of prompt + response")
    parser.add_argument("--cache-dir", default=None, help="embedding cache root (default: $HF_SMOE_CACHE/features)")
    parser.add_argument("--seed", type=seed_value, default=0)


def add_checkpoint_data_arguments(parser) -> None:
    """A checkpoint and the data it is measured on (`smoe eval`, `smoe interpret`)."""
    parser.add_argument("checkpoint", help="a folder written by `smoe train` / `smoe demo`, or a Hub id")
    parser.add_argument("--dataset", required=True, help="Hub dataset name or local file/folder")
    parser.add_argument("--format", default=None, help="data format (default: detected); see hf_smoe.data.FORMATS")
    parser.add_argument("--split", default=None, help="Hub split to read (default: test); local files have none")
    parser.add_argument("--max-pairs", type=at_least_one, default=None, help="keep a seeded random subset of this size")
    parser.add_argument("--max-length", type=at_least_one, default=1024, help="truncation length of prompt + response")
    parser.add_argument("--cache-dir", default=None, help="embedding cache root (default: $HF_SMOE_CACHE/features)")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the subset and of the split into halves")


def add_generator_arguments(parser) -> None:
    """The describer and the judge of the interpretation pipeline (`smoe interpret`, `smoe reproduce table4/fig6`)."""
    parser.add_argument("--generator", default="local", metavar="local|MODEL|URL",
                        help="the describer: 'local' (the embedded SmolLM2-135M-Instruct), a folder or Hub id of any "
                             "causal LM, or the URL of an OpenAI-compatible server (vLLM, TGI, transformers serve, "
                             "hosted APIs)")
    parser.add_argument("--generator-model", default=None, help="the model name an endpoint should use")
    parser.add_argument("--judge", default=None, metavar="local|MODEL|URL", help="the judge (default: the describer)")
    parser.add_argument("--judge-model", default=None, help="the model name the judge's endpoint should use")
    parser.add_argument("--generation-cache", default=None,
                        help="folder of cached answers (default: $HF_SMOE_CACHE/generations)")


TRAINING_FLAGS_HELP = ("Any `smoe train` training flag (--learning_rate, --router_learning_rate, "
                       "--per_device_train_batch_size, --optim, --weight_decay, --bf16, ...; see `smoe train --help`) "
                       "applies to every head the command trains.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoe", description="Sparse Mixture-of-Experts reward models: train, read, steer and personalize.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="offline end-to-end demo on the embedded defaults",
                               description="Embeds a generated preference set with SmolLM2-135M-Instruct, trains "
                                           "single, vanilla, micro and sparse, and compares them.",
                               epilog=TRAINING_FLAGS_HELP)
    demo.add_argument("--output-dir", default="outputs/demo", help="where the sparse checkpoint is written")
    demo.add_argument("--num-prompts", type=at_least_one, default=None,
                      help="prompts to generate (default: the set's own)")
    demo.add_argument("--num-experts", type=at_least_one, default=4)
    demo.add_argument("--epochs", type=positive_number, default=3.0)
    demo.add_argument("--cache-dir", default=None, help="embedding cache root (default: $HF_SMOE_CACHE/features)")
    demo.add_argument("--seed", type=seed_value, default=0)

    embed = commands.add_parser("embed", help="encode a dataset into the embedding cache",
                                description="Runs every unique text of the dataset through the frozen backbone once.")
    add_data_arguments(embed)

    commands.add_parser("train", add_help=False, help="train a reward model and write (or push) its checkpoint "
                                                       "(`smoe train --help`: every TrainingArguments flag, YAML "
                                                       "recipes)")
    commands.add_parser("tune-backbone", add_help=False,
                        help="reward-tune a backbone's top layers on cached hidden states and write a backbone folder "
                             "any --backbone takes (`smoe tune-backbone --help`)")

    evaluation = commands.add_parser("eval", help="every paper metric the data allows, for a checkpoint",
                                     description="Accuracy, loss terms, routing entropy, global entropy, expert "
                                                 "correlation; with categories also coverage, purity and "
                                                 "specialization. Printed as a table and written as JSON.")
    add_checkpoint_data_arguments(evaluation)
    evaluation.add_argument("--output", default=None, help="JSON file (default: CHECKPOINT/eval_results.json)")
    add_overwrite_argument(evaluation, "--output")

    interpret = commands.add_parser(
        "interpret", help="describe each expert in one line and check the descriptions (paper §6.1)",
        description="Splits DATA by prompt into two halves; an LLM describes each expert from its 20 top-routed "
                    "prompts of the first half (Fig. 4), an LLM judge answers YES/NO for a stratified sample of the "
                    "second half (Fig. 5: 100 prompts from the expert's top 10%, 100 from the rest), and description "
                    "fidelity (Eq. 19-20) is their correlation with the routing, beside the random baseline "
                    "(shuffled prompts, router fixed) and top-10% expert specialization (Eq. 12). Writes "
                    "interpretation.json and interpretation.md and adds the table to the checkpoint's model card. "
                    "Every answer is cached, so a rerun or an interrupted run resumes for free.")
    add_checkpoint_data_arguments(interpret)
    add_generator_arguments(interpret)
    interpret.add_argument("--no-random-baseline", action="store_true",
                           help="skip the random baseline (half the calls)")
    interpret.add_argument("--output-dir", default=None,
                           help="default: the checkpoint folder, whose interpretation files a rerun refreshes; "
                                "elsewhere earlier ones are replaced only with --overwrite")
    add_overwrite_argument(interpret, "interpretation.json/.md in --output-dir")

    reproduce = commands.add_parser(
        "reproduce", help="the paper's controlled experiments on the shared data (Markdown + JSON + command)",
        epilog=TRAINING_FLAGS_HELP,
        description="table1: category recovery (single, vanilla, micro, sparse; mean ± std over seeds) on HH "
                    "helpful+harmless, DSP with its criterion, and the demo set, with routing heatmaps. table8: the "
                    "λ grid of App. C on one dataset with the collapse diagnosis of each row. fig2: steering flip "
                    "rates on DSP (trained with the criterion, tested without). table5 / fig8: train on HH + "
                    "WebGPT, adapt the router to each DSP domain from n = 50 (fig8: 5 to 100) pairs; table13: to 5 "
                    "Dirichlet(0.3) users over the DSP domains. table4: describe and judge the experts of single, "
                    "vanilla, micro, sparse and the random baseline (general mixture K = 20; DSP with the criterion "
                    "K = 5). fig6: fidelity and specialization of sparse against K on the general mixture. table14: "
                    "GRPO post-training of a policy with the universal and the domain-adapted sparse reward model, "
                    "and the win rate of one over the other on unseen DSP queries (App. I; needs hf-smoe[trl]). "
                    "backbone: reward-tune the backbone's top --layers layers on the train split of hh, dsp and "
                    "general (the splits the other experiments' heads train on), one folder each, to pass as their "
                    "--backbone.")
    reproduce.add_argument("experiment", choices=["table1", "table8", "fig2", "table5", "fig8", "table13", "table4",
                                                  "fig6", "table14", "backbone"])
    reproduce.add_argument("--layers", type=at_least_one, default=2,
                           help="backbone: the top layers tuned (the others are frozen and their output cached)")
    reproduce.add_argument("--head-init", default="random", choices=["random", "probe"],
                           help="backbone: the tuning head's start (probe: the best linear probe, then tune)")
    reproduce.add_argument("--lora-rank", type=int, default=0,
                           help="backbone: 0 tunes the full top layers; r > 0 trains rank-r LoRA adapters on them")
    reproduce.add_argument("--tuning-pairs", default="train", choices=["train", "unsampled"],
                           help="backbone: 'train' tunes on the heads' train split; 'unsampled' adds every pair of "
                                "the source files the sample leaves out, except those of a validation or test prompt")
    reproduce.add_argument("--datasets", nargs="+", default=None, choices=["hh", "dsp", "demo", "general"],
                           help="table1: datasets (default: hh dsp demo); table8: the first one (default: hh); "
                                "table4: general and/or dsp (default: both)")
    reproduce.add_argument("--seeds", nargs="+", type=seed_value, default=None,
                           help="training seeds (default: 0 1 2; table8, fig6: 0)")
    reproduce.add_argument("--size", nargs="+", default=[], metavar="DATASET=N",
                           help="HH pairs per subset / DSP queries / demo prompts (default: hh=700 dsp=150 demo=360)")
    reproduce.add_argument("--epochs", type=positive_number, default=None,
                           help="epochs of every head (default 3) or, for backbone, of the tuning (default 2)")
    reproduce.add_argument("--num-experts", type=at_least_one, default=None, metavar="K",
                           help="fig2, table5, fig8, table13, table4: K (default: the paper's, 10 for fig2 (§5.2) "
                                "and 20 for the personalization and interpretation experiments (§6); table4 on DSP: "
                                "5)")
    reproduce.add_argument("--measure-on", default="test", choices=["test", "validation"],
                           help="table1: 'validation' labels experts on train and measures on validation, for "
                                "diagnosis without reading test")
    reproduce.add_argument("--k-values", nargs="+", type=at_least_one, default=None, metavar="K",
                           help="fig6: the numbers of experts (default: 10 20 30 40 50)")
    add_generator_arguments(reproduce)
    reproduce.add_argument("--samples-per-stratum", type=at_least_one, default=100,
                           help="table4, fig6: test prompts judged per expert from its top 10%% and from the rest "
                                "(App. A: 100)")
    reproduce.add_argument("--domain", default="entertainment", choices=["academy", "business", "entertainment",
                                                                         "literature"],
                           help="table14: the DSP domain the router is adapted to and the policy is aligned with")
    reproduce.add_argument("--steps", type=at_least_one, default=100,
                           help="table14: GRPO steps per policy (8 completions each: 2 prompts x 4 rollouts)")
    reproduce.add_argument("--eval-prompts", type=at_least_one, default=100,
                           help="table14: unseen DSP queries the two policies answer for the win rates")
    reproduce.add_argument("--policy", default=None,
                           help="table14: causal LM to post-train (default: the embedded SmolLM2-135M-Instruct)")
    reproduce.add_argument("--backbone", default=DEFAULT_BACKBONE)
    reproduce.add_argument("--data-root", default=None,
                           help="folder with hh-rlhf/, dsp/ and webgpt/ (default: $HF_SMOE_DATA; required for "
                                "every experiment but table1 --datasets demo)")
    reproduce.add_argument("--cache-dir", default=None)
    reproduce.add_argument("--output-dir", default=None, help="default: outputs/reproduce/EXPERIMENT")

    steer = commands.add_parser("steer", help="turn one expert up or down and compare rewards",
                                description="Scores RESPONSES to PROMPT with the router's own weights and with expert "
                                            "K set to weight W (the others rescaled to 1 - W).")
    steer.add_argument("checkpoint")
    steer.add_argument("--expert", type=int, required=True)
    steer.add_argument("--weight", type=float, required=True, help="in [0, 1]; 0 removes the expert")
    steer.add_argument("--prompt", required=True)
    steer.add_argument("--responses", nargs="+", required=True)

    adapt = commands.add_parser("adapt", help="personalize the router from ~50 labeled pairs",
                                description="Adapts the router on N pairs of DATA (Hedge or HyRe; experts and "
                                            "backbone frozen), measures accuracy before/after on the other pairs, "
                                            "and writes the router file and a bar chart of the weight shift.")
    adapt.add_argument("checkpoint")
    adapt.add_argument("--data", required=True, help="the user's labeled pairs (any supported format)")
    adapt.add_argument("--format", default=None)
    adapt.add_argument("--n", type=at_least_one, default=50, help="pairs to adapt on (the rest measure the change)")
    adapt.add_argument("--method", default="hedge", choices=["hedge", "hyre"])
    adapt.add_argument("--output", required=True, metavar="ROUTER", help="router file (.safetensors)")
    add_overwrite_argument(adapt, "the router file")
    adapt.add_argument("--max-eval-pairs", type=at_least_one, default=None)
    adapt.add_argument("--max-length", type=at_least_one, default=1024)
    adapt.add_argument("--cache-dir", default=None)
    adapt.add_argument("--seed", type=seed_value, default=0)

    push = commands.add_parser("push", help="upload a checkpoint folder to the Hub",
                               description="Uploads what the checkpoint owns (config, weights, remote code, tokenizer "
                                           "files, card) in one commit; nothing else in the folder leaves the "
                                           "machine.")
    push.add_argument("checkpoint", help="a folder written by `smoe train` / `smoe demo`")
    push.add_argument("repo_id", metavar="ORG/NAME")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing one keeps its "
                                                             "visibility)")
    push.add_argument("--revision", default=None, help="branch to push to (created if needed)")

    bench = commands.add_parser("bench", help="speed benchmarks, each a ratio against a baseline in the same run",
                                description="embed: cache tokens/s vs a one-text-at-a-time loop and vs the FLOP "
                                            "bound. train: training on cached features vs re-running the frozen "
                                            "backbone every step, at equal final accuracy. users: 1 vs 100 "
                                            "users from one pass. judge: the local judge of `smoe interpret`, one "
                                            "prompt at a time in fp32 vs batched with shared prompt beginnings, fp32 "
                                            "and bf16. tune: tuning the top layers from cached hidden states vs "
                                            "re-running the lower layers every step vs tuning every layer. scale: one "
                                            "training epoch and an evaluation on synthetic features of --pairs "
                                            "pairs, peak memory and pairs/s, vs every vector in RAM.")
    bench.add_argument("what", choices=["embed", "train", "users", "judge", "tune", "scale"])
    bench.add_argument("--backbone", default=DEFAULT_BACKBONE)
    bench.add_argument("--num-texts", type=at_least_one, default=64, help="embed: texts to encode")
    bench.add_argument("--num-pairs", type=at_least_one, default=192,
                       help="train: pairs (75%% train, 25%% held out); tune: pairs (80/10/10)")
    bench.add_argument("--layers", type=at_least_one, default=2, help="tune: top layers tuned")
    bench.add_argument("--epochs", type=float, default=1.0, help="tune: epochs timed")
    bench.add_argument("--num-users", type=at_least_one, default=100, help="users: routers scored from one pass")
    bench.add_argument("--num-prompts", type=at_least_one, default=64, help="judge: Fig. 5 prompts to judge")
    bench.add_argument("--pairs", type=at_least_one, nargs="+", default=[10_000, 100_000],
                       help="scale: pair counts to run (90%% train, 10%% test)")
    bench.add_argument("--hidden", type=at_least_one, default=3072, help="scale: feature width (3B backbone: 3072)")
    bench.add_argument("--in-memory-max-pairs", type=int, default=10_000,
                       help="scale: run the all-in-RAM baseline up to this many pairs")
    bench.add_argument("--scratch-dir", default=None, help="scale: where the synthetic features go (deleted after)")
    bench.add_argument("--output-dir", default="outputs/bench")
    bench.add_argument("--seed", type=seed_value, default=0)
    return parser


TRAINING_COMMANDS = ("demo", "reproduce")  # they train heads, and take any training flag beside their own
SET_BY_THE_COMMAND = {"output_dir": "--output-dir", "num_train_epochs": "--epochs", "seed": "--seed / --seeds",
                      "overwrite_output_dir": "the command's own output rule"}


def parse_training_overrides(command: str, argv: list, arguments_class=None) -> dict:
    """The `SMoETrainingArguments` (or `arguments_class`) flags given to `smoe demo` / `smoe reproduce` beside their
    own (any `smoe train` training flag: `--learning_rate 1e-3 --per_device_train_batch_size 32 --optim
    adamw_torch_fused`), as {field: value} for every head (or backbone) the command trains."""
    if not argv:
        return {}
    from transformers import HfArgumentParser

    from .training import SMoETrainingArguments

    arguments_class = arguments_class or SMoETrainingArguments
    parser = HfArgumentParser(arguments_class, prog=f"smoe {command}",
                              usage=f"smoe {command} [its options] [training flags, see `smoe train --help`]")
    for action in parser._actions:  # only the flags given on the command line come back
        action.default, action.required = argparse.SUPPRESS, False
    overrides = vars(parser.parse_args(argv))
    clash = sorted(set(overrides) & set(SET_BY_THE_COMMAND))
    if clash:
        raise InputError(f"{clash[0]}: `smoe {command}` sets it itself; use {SET_BY_THE_COMMAND[clash[0]]}.")
    try:
        arguments_class(output_dir="unused", **overrides)
    except ValueError as error:  # TrainingArguments' own checks of an inconsistent combination
        raise InputError(f"training arguments: {first_line(error)}") from None
    return overrides


def run(args) -> None:
    if args.command == "demo":
        from .demo import run_demo

        run_demo(output_dir=args.output_dir, num_prompts=args.num_prompts, num_experts=args.num_experts,
                 epochs=args.epochs, seed=args.seed, cache_dir=args.cache_dir,
                 training=parse_training_overrides("demo", args.training_argv))
    elif args.command == "embed":
        from .data import load_pairs
        from .features import EmbeddingCache
        from .loading import load_backbone_model

        pairs = load_pairs(args.dataset, args.format, max_pairs=args.max_pairs, seed=args.seed)
        model, tokenizer = load_backbone_model(args.backbone, "sparse", None, args.seed)
        cache = EmbeddingCache(model, tokenizer, cache_dir=args.cache_dir, max_length=args.max_length)
        cache.pair_features(pairs)
        print(f"{len(pairs)} pairs cached in {cache.directory}")
    elif args.command == "train":
        from .training_job import train_reward_model

        data, model, training = parse_train_arguments(args.train_argv)
        results = train_reward_model(data, model, training)
        print(json.dumps(results, indent=2, default=str))
        print(f"Checkpoint, model card and results.json written to {training.output_dir}")
    elif args.command == "tune-backbone":
        from .backbone_tuning import tune_backbone

        data, tuning, training = parse_train_arguments(args.train_argv, tune_backbone_parser())
        results = tune_backbone(data, tuning, training)
        print(json.dumps(results, indent=2, default=str))
        print(f"Tuned backbone written to {training.output_dir}; train on it with --backbone {training.output_dir}")
    elif args.command == "eval":
        from .evaluation import evaluate_checkpoint, is_evaluation_file, write_evaluation
        from .outputs import check_output_file

        output = check_output_file(args.output or Path(args.checkpoint) / "eval_results.json", ".json",
                                   overwrite=args.overwrite or args.output is None, ours=is_evaluation_file)
        results = evaluate_checkpoint(args.checkpoint, args.dataset, format=args.format, split=hub_split(args),
                                      max_pairs=args.max_pairs, seed=args.seed, cache_dir=args.cache_dir,
                                      max_length=args.max_length)
        print_values(results, "{:.4f}")
        job = {name: getattr(args, name) for name in ("checkpoint", "dataset", "format", "split", "max_pairs", "seed",
                                                      "max_length", "cache_dir")}
        path = write_evaluation(results, output, job)
        print(f"Written to {path}")
    elif args.command == "interpret":
        from .interpret import expert_table_markdown, interpret_checkpoint

        result = interpret_checkpoint(
            args.checkpoint, args.dataset, generator=args.generator, generator_model=args.generator_model,
            judge=args.judge, judge_model=args.judge_model, format=args.format, split=hub_split(args),
            max_pairs=args.max_pairs, seed=args.seed, cache_dir=args.cache_dir, generation_cache=args.generation_cache,
            max_length=args.max_length, random_baseline=not args.no_random_baseline, output_dir=args.output_dir,
            overwrite=args.overwrite)
        print(expert_table_markdown(result))
        print(f"Written to {Path(args.output_dir or args.checkpoint) / 'interpretation.json'} and interpretation.md")
    elif args.command == "reproduce":
        from .experiments import (reproduce_fig2, reproduce_personalization, reproduce_table1, reproduce_table8,
                                  resolve_data_root)

        sizes = parse_sizes(args.size)
        only_generated = bool(args.datasets) and set(args.datasets) == {"demo"}  # the demo set needs no files
        if args.experiment == "backbone":
            from .backbone_tuning import BackboneTuningTrainingArguments
            from .experiments import TUNED_BACKBONE_DATASETS, reproduce_backbone

            training = parse_training_overrides("reproduce", args.training_argv, BackboneTuningTrainingArguments)
            reproduce_backbone(datasets=tuple(args.datasets or TUNED_BACKBONE_DATASETS),
                               output_dir=args.output_dir or "outputs/reproduce/backbone", backbone=args.backbone,
                               sizes=sizes, seed=(args.seeds or [0])[0], cache_dir=args.cache_dir,
                               data_root=None if only_generated else resolve_data_root(args.data_root),
                               training=training | ({"num_train_epochs": args.epochs} if args.epochs else {}),
                               tuning={"layers": args.layers, "head_init": args.head_init,
                                       "lora_rank": args.lora_rank}, tuning_pairs=args.tuning_pairs)
            return
        options = {"backbone": args.backbone, "epochs": args.epochs or 3.0, "cache_dir": args.cache_dir,
                   "training": parse_training_overrides("reproduce", args.training_argv),
                   "data_root": None if only_generated else resolve_data_root(args.data_root),
                   "output_dir": args.output_dir or f"outputs/reproduce/{args.experiment}"}
        if args.experiment == "table1":
            if "general" in (args.datasets or ()):
                raise InputError("--datasets: 'general' has no categories for Table 1; choose from hh, dsp, demo.")
            reproduce_table1(datasets=tuple(args.datasets or ("hh", "dsp", "demo")),
                             seeds=tuple(args.seeds or (0, 1, 2)), sizes=sizes, measure_on=args.measure_on,
                             **options)
        elif args.experiment in ("table5", "fig8", "table13"):
            reproduce_personalization(n_values=(5, 10, 25, 50, 100) if args.experiment == "fig8" else (50,),
                                      num_users=5 if args.experiment == "table13" else None,
                                      seeds=tuple(args.seeds or (0, 1, 2)), **options,
                                      **({"num_experts": args.num_experts} if args.num_experts else {}),
                                      **({"dsp_queries": sizes["dsp"]} if "dsp" in sizes else {}))
        elif args.experiment in ("table4", "fig6"):
            from .experiments import reproduce_fig6, reproduce_table4

            readers = {"generator": args.generator, "generator_model": args.generator_model, "judge": args.judge,
                       "judge_model": args.judge_model, "generation_cache": args.generation_cache,
                       "per_stratum": args.samples_per_stratum}
            if args.experiment == "table4":
                reproduce_table4(datasets=tuple(args.datasets or ("general", "dsp")),
                                 seeds=tuple(args.seeds or (0, 1, 2)), dsp_queries=sizes.get("dsp"),
                                 num_experts=args.num_experts, **readers, **options)
            else:
                reproduce_fig6(k_values=tuple(args.k_values or (10, 20, 30, 40, 50)), seeds=tuple(args.seeds or (0,)),
                               **readers, **options)
        elif args.experiment == "table14":
            from .experiments import reproduce_table14

            reproduce_table14(domain=args.domain, steps=args.steps, seed=(args.seeds or [0])[0], policy=args.policy,
                              eval_prompts=args.eval_prompts, **options,
                              **({"num_experts": args.num_experts} if args.num_experts else {}),
                              **({"dsp_queries": sizes["dsp"]} if "dsp" in sizes else {}))
        elif args.experiment == "fig2":
            reproduce_fig2(seeds=tuple(args.seeds or (0, 1, 2)), size=sizes.get("dsp"), **options,
                           **({"num_experts": args.num_experts} if args.num_experts else {}))
        else:
            dataset = (args.datasets or ["hh"])[0]
            reproduce_table8(dataset=dataset, seeds=tuple(args.seeds or (0,)), size=sizes.get(dataset), **options)
        print(f"Written to {options['output_dir']}/")
    elif args.command == "steer":
        from .loading import load_checkpoint
        from .steering import steer_responses

        model, tokenizer = load_checkpoint(args.checkpoint)
        result = steer_responses(model, tokenizer, args.prompt, args.responses, args.expert, args.weight)
        print("routing before: " + " ".join(f"{w:.3f}" for w in result["routing_before"]))
        print("routing after:  " + " ".join(f"{w:.3f}" for w in result["routing_after"]))
        print(f"{'reward before':>14} {'reward after':>13}  response")
        for response, before, after in zip(args.responses, result["rewards_before"], result["rewards_after"]):
            print(f"{before:>14.4f} {after:>13.4f}  {response[:70]}")
    elif args.command == "adapt":
        from .personalization import adapt_checkpoint

        result = adapt_checkpoint(args.checkpoint, args.data, output=args.output, n=args.n, method=args.method,
                                  format=args.format, seed=args.seed, max_eval_pairs=args.max_eval_pairs,
                                  cache_dir=args.cache_dir, max_length=args.max_length, overwrite=args.overwrite)
        print(f"{result['method']} on {result['n']} pairs; accuracy on the other {result['eval_pairs']} pairs: "
              f"{result['accuracy_before']:.4f} -> {result['accuracy_after']:.4f}")
        print("weight shift (mean routing after - before): "
              + " ".join(f"E{k} {shift:+.3f}" for k, shift in enumerate(result["weight_shift"])))
        print(f"Router written to {result['router']}; chart {result['chart']}")
    elif args.command == "push":
        from .hub import push_checkpoint

        print(f"Pushed: {push_checkpoint(args.checkpoint, args.repo_id, private=args.private, revision=args.revision)}")
    elif args.command == "bench":
        from .bench import run_bench

        options = {"embed": {"num_texts": args.num_texts}, "train": {"num_pairs": args.num_pairs},
                   "users": {"num_users": args.num_users}, "judge": {"num_prompts": args.num_prompts},
                   "tune": {"num_pairs": args.num_pairs, "layers": args.layers, "epochs": args.epochs},
                   "scale": {"num_pairs": args.pairs, "hidden": args.hidden, "scratch_dir": args.scratch_dir,
                             "in_memory_max_pairs": args.in_memory_max_pairs}}[args.what]
        print_record(run_bench(args.what, args.backbone, args.output_dir, seed=args.seed, **options))


def hub_split(args) -> str:
    """`--split` (default "test"), which only a Hub dataset has: given with a local file it is an error, not a no-op."""
    if args.split is not None and Path(args.dataset).expanduser().exists():
        raise InputError(f"--split: {args.dataset} is a local file or folder, which has no splits; drop --split, or "
                         "give the split's own file.")
    return args.split or "test"


def train_parser():
    """`smoe train`'s parser: the data, model and training dataclasses (TRL's scripts are the model), with the
    defaults `smoe train` adds to `SMoETrainingArguments`: a Trainer checkpoint per epoch (the last one kept) so a
    killed run resumes."""
    from transformers import HfArgumentParser

    from .training_job import DataArguments, ModelArguments
    from .training import SMoETrainingArguments

    parser = HfArgumentParser((DataArguments, ModelArguments, SMoETrainingArguments), prog="smoe train",
                              description="Loads pairs, splits them (seeded, category-stratified), caches backbone "
                                          "features, trains the head with the Trainer, and writes a checkpoint that "
                                          "loads with AutoModel, its model card and results.json. A YAML recipe "
                                          "(`smoe train recipe.yaml`) sets any of these flags; flags given after it "
                                          "override it.")
    parser.set_defaults(save_strategy="epoch", save_total_limit=1, seed=0)
    return parser


def tune_backbone_parser():
    """`smoe tune-backbone`'s parser: the data (as `smoe train` reads and splits it), what is tuned, and the
    Trainer's arguments."""
    from transformers import HfArgumentParser

    from .backbone_tuning import BackboneTuningArguments, BackboneTuningTrainingArguments
    from .training_job import DataArguments

    return HfArgumentParser((DataArguments, BackboneTuningArguments, BackboneTuningTrainingArguments),
                            prog="smoe tune-backbone",
                            description="Splits the pairs as `smoe train` does (same seed and fractions: same test "
                                        "set, never read here), caches the hidden states entering the top --layers "
                                        "layers once per text, tunes those layers and a Bradley-Terry head on the "
                                        "train split, and writes the tuned backbone (loads with AutoModel, no "
                                        "hf_smoe needed) with its tokenizer and results.json.")


def parse_train_arguments(argv: list, parser=None) -> tuple:
    """The dataclasses of `smoe train` (or of `parser`) from `[RECIPE.yaml] [--flag value ...]`: the recipe's keys
    are the flags' names, and flags on the command line override them."""
    parser = parser or train_parser()
    if argv and argv[0].endswith((".yaml", ".yml")):
        recipe = read_recipe(argv[0])
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise InputError(f"recipe {argv[0]}: unknown key(s) {unknown}; keys are `{parser.prog}` flags without "
                             f"the dashes (see `{parser.prog} --help`).")
        parser.set_defaults(**recipe)
        for action in parser._actions:
            if action.dest in recipe:
                action.required = False
        argv = argv[1:]
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    except ValueError as error:  # TrainingArguments' own checks of an inconsistent combination
        raise InputError(f"training arguments: {first_line(error)}") from None


def read_recipe(path: str) -> dict:
    import yaml

    try:
        recipe = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"recipe: no such file {path}.") from None
    except yaml.YAMLError as error:
        raise InputError(f"recipe {path}: not valid YAML ({first_line(error)}).") from None
    if not isinstance(recipe, dict):
        raise InputError(f"recipe {path}: expected a mapping of flag names to values, got {type(recipe).__name__}.")
    return recipe


def parse_sizes(items: list) -> dict:
    """`["hh=700", "dsp=150"]` -> {"hh": 700, "dsp": 150}."""
    sizes = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in ("hh", "dsp", "demo") or not value.isdigit() or int(value) < 1:
            raise InputError(f"--size: expected DATASET=N with DATASET one of hh, dsp, demo and N >= 1, got {item!r}.")
        sizes[name] = int(value)
    return sizes


def print_values(values: dict, float_format: str, indent: str = "  ") -> None:
    """One indented `name  value` line per entry (a nested dict indented under its name); floats in
    `float_format`."""
    for key, value in values.items():
        if isinstance(value, dict):
            print(f"{indent}{key}")
            print_values(value, float_format, indent + "  ")
        else:
            print(f"{indent}{key:<28} {float_format.format(value) if isinstance(value, float) else value}")


def print_record(record: dict) -> None:
    print(f"{record['benchmark']} benchmark on {record['machine']}")
    print_values(record["results"], "{:,.4g}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] in (["train"], ["tune-backbone"]):  # their own dataclass parsers: every TrainingArguments flag
        args = argparse.Namespace(command=argv[0], train_argv=argv[1:])
    else:
        args, args.training_argv = parser.parse_known_args(argv)
        if args.training_argv and args.command not in TRAINING_COMMANDS:
            parser.error(f"unrecognized arguments: {' '.join(args.training_argv)}")
    if args.command is None:
        parser.print_help()
        return 0
    python_format, warnings.formatwarning = warnings.formatwarning, one_line_warning(args.command)
    try:
        run(args)
    except Exception as error:  # a failure the user can fix: one clear line, exit 2; a bug keeps its traceback
        message = user_error_message(error)
        if message is None:
            raise
        print(f"smoe {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = python_format
    return 0


def one_line_warning(command: str):
    """`warnings.formatwarning` for the CLI: `smoe CMD: warning: message` (what was dropped and how many), without
    the source line Python would print under it."""
    def format_warning(message, category, filename, lineno, line=None):
        kind = "" if category is UserWarning else f"{category.__name__}: "
        return f"smoe {command}: warning: {kind}{message}\n"
    return format_warning


# OS errors a user fixes outside the program (space, permissions), reported with the path they hit.
ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on the device; free space or write somewhere else",
                      errno.EDQUOT: "disk quota exceeded; free space or write somewhere else",
                      errno.EACCES: "permission denied; choose a path you can write",
                      errno.EROFS: "read-only file system; choose a writable path"}


def user_error_message(error: Exception) -> str | None:
    """The one line `smoe` prints for a failure the user caused or can fix (bad input, an unreachable server, a
    full disk), or None for anything else. The endpoint module is imported only once something failed, so a
    command that never talks to a server does not load it at start-up."""
    from datasets.exceptions import DatasetNotFoundError

    from .endpoint import EndpointError

    if isinstance(error, (InputError, EndpointError)):
        return " ".join(str(error).split("\n"))
    if isinstance(error, DatasetNotFoundError):  # a Hub dataset name that does not exist (or is private)
        return f"dataset: {error} Check the name, or log in (`hf auth login`) if it is private."
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        where = f" ({error.filename})" if error.filename else ""
        return f"{ENVIRONMENT_ERRNOS[error.errno]}{where}."
    return None


if __name__ == "__main__":
    sys.exit(main())
