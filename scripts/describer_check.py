"""The describer measured where the truth is known: each category of a dataset is routed to its own expert (an ideal
router), its top describing prompts are described with each describer prompt variant, and the descriptions are judged
on the measuring half as `smoe interpret --check-judge` judges hand-written ones. Writes the descriptions, whether each
describes, and the judge's figures beside the exact command.

    python scripts/describer_check.py --dataset ../shared/data/dsp/domain_specific_preference.test.json \
        --format dsp --variants paper short --output describer_check.json
"""

import json
import sys
from dataclasses import asdict, dataclass, field

import torch
from transformers import HfArgumentParser

from hf_smoe.data import load_pairs
from hf_smoe.evaluation import prompt_halves
from hf_smoe.interpret import ReadingSettings, distinct_prompts_and_categories, judge_agreement
from hf_smoe.interpret.describe import describe_experts
from hf_smoe.interpret.generators import load_generator
from hf_smoe.interpret.judge_checks import judge_check_prompts


@dataclass
class DescriberCheckArguments:
    dataset: str = field(metadata={"help": "pairs with a `category` column"})
    format: str | None = field(default=None, metadata={"help": "data format (default: detected)"})
    generator: str = field(default="default", metadata={"help": "describer and judge, as `smoe interpret` names it"})
    variants: list[str] = field(default_factory=lambda: ["paper", "short"], metadata={"help": "describer prompts"})
    judge_prompt: str = field(default="question")
    prompts_per_category: int = field(default=20, metadata={"help": "measuring (and calibrating) prompts judged"})
    seed: int = 0
    output: str = "describer_check.json"


def main(args: DescriberCheckArguments) -> dict:
    pairs = load_pairs(args.dataset, args.format, split="test", seed=args.seed)
    describing, measuring = prompt_halves(pairs.remove_columns("prompt"), pairs, args.seed)  # `smoe interpret`'s
    texts, categories = distinct_prompts_and_categories(describing)
    names = sorted(set(categories))
    # an ideal router: weight 1 on the expert of the prompt's category, ties broken by a little seeded noise
    noise = torch.rand(len(texts), len(names), generator=torch.Generator().manual_seed(args.seed))
    routing = torch.tensor([[float(c == name) for name in names] for c in categories]) + 0.01 * noise
    measured = judge_check_prompts(*distinct_prompts_and_categories(measuring), args.prompts_per_category, args.seed)
    calibration = judge_check_prompts(texts, categories, args.prompts_per_category, args.seed)
    generator = load_generator(args.generator)
    results = {}
    for variant in args.variants:
        settings = ReadingSettings(describer_prompt=variant, judge_prompt=args.judge_prompt)
        experts = describe_experts(generator, routing, texts, settings, judge=generator, seed=args.seed)
        descriptions = {name: expert["description"] or "(empty)" for name, expert in zip(names, experts)}
        check = judge_agreement(generator, *measured, descriptions, args.judge_prompt, calibration)
        results[variant] = {"descriptions": descriptions, "raw_outputs": [e["raw_output"] for e in experts],
                            "attempts": [e["attempts"] for e in experts], "problems": [e["problem"] for e in experts],
                            "distinctive_words": [e["distinctive_words"] for e in experts],
                            **{key: check[key] for key in ("ideal_fidelity", "ideal_fidelity_probability", "auc",
                                                           "ideal_fidelity_calibrated")}}
        print(variant, json.dumps(results[variant], indent=1), flush=True)
    record = {"command": " ".join(["python", *sys.argv]), "arguments": asdict(args), "describer": generator.identity,
              "results": results}
    with open(args.output, "w", encoding="utf-8") as output:
        json.dump(record, output, indent=1)
    return record


if __name__ == "__main__":
    main(*HfArgumentParser(DescriberCheckArguments).parse_args_into_dataclasses())
