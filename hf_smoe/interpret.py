"""Reading the experts (§6.1, App. A, Fig. 4-5): describe each expert in one line, then check the description.

For each expert, an LLM (the *describer*) reads the expert's 20 highest-routing-weight validation prompts and names
their common feature (Fig. 4's prompt). An LLM *judge* then answers, for test prompts, whether each one shows that
feature (Fig. 5's prompt); description fidelity is the Pearson correlation between those YES/NO judgments and the
expert's routing weights (Eq. 19-20) on a stratified sample: 100 prompts from the top 10% of the expert's weights and
100 from the other 90% (App. A). The random baseline describes each expert from shuffled prompts with the router
kept fixed. Everything runs on cached features: the router needs only the prompt representations.

The unit here is a distinct prompt: routing depends only on the prompt, so a prompt shared by several pairs counts
once, both among the top examples and in the fidelity sample.
"""

import re
from pathlib import Path

import torch

from .data import load_pairs
from .encoding import as_messages
from .evaluation import head_outputs, prompt_halves
from .features import EmbeddingCache, as_training_features
from .generators import TextGenerator, load_describer_and_judge
from .hub import is_hub_id, write_expert_table
from .loading import load_checkpoint
from .metrics import (description_fidelity, expert_specialization_top, pairwise_accuracy, top_examples,
                      top_percent_count)
from .modeling.modeling_smoe import mixture_reward
from .outputs import check_output_file, run_command, save_run, write_text_atomic
from .modeling.configuration_smoe import InputError

# Fig. 4, word for word; the paper prints it as running text, the line breaks here restore its sections.
DESCRIBER_PROMPT = """Task Overview
You are a machine learning researcher analyzing a sparse mixture-of-experts reward model. The model contains a \
router that assigns each input prompt to one or more experts. You are trying to understand what feature of the input \
prompt causes a specific expert to receive high routing weight. Each dataset example consists only of a user prompt. \
These prompts were selected because this expert was strongly activated for them, meaning the router assigned this \
expert a high weight. Your goal is to identify the common feature shared by these prompts, and to describe this \
feature as a concise, natural language concept.

Instructions
First, inspect each prompt and consider what concrete property it has.
Then, synthesize the single feature that is most consistently shared across the prompts.
The feature should describe the input prompt itself, not the model, the router, or the expert.
For example, the common feature might be:
"asks for emotionally supportive advice"
"requests factual explanation of a technical concept"
"asks for creative writing or brainstorming"
"contains a safety-sensitive or potentially harmful request"
"asks for evaluation of competing options"
If the prompts do not share a clear topic, focus on the type of user intent, task format, reasoning style, domain, \
constraint, or interaction pattern that best explains why the expert fires.

Additional Rules
Rules about the feature you identify:
The feature should be objective and concrete.
Err on the side of being concise.
The feature should be an attribute that could be present in an individual prompt.
Do not refer to "the expert", "the router", "activation", or "these examples" in the final answer.
Do not use vague descriptions such as "is helpful", "is complex", or "is high quality".
Avoid overly broad concepts such as "general question" unless no more specific feature is apparent.
If the shared feature is a negation, describe it directly, e.g., "does not specify a concrete task or goal".

Prompts
----------------
{examples}
----------------

Output
Do not output anything besides the feature.
Output exactly one description, starting with "-" and surrounded by quotes.
Your response is:-\""""

# Fig. 5, word for word.
JUDGE_PROMPT = """You are a binary classifier. Task:
Determine whether the input text expresses the feature described below.
Feature description:
{description}
Input text:
{input_text}
Decision rule:
Answer YES if the input text clearly matches or expresses the feature description.
Answer NO otherwise.
Output format:
Return exactly one token: YES or NO.
Answer:"""

TOP_EXAMPLES = 20  # validation prompts shown to the describer (§6.1)
SAMPLES_PER_STRATUM = 100  # test prompts judged from the top 10% and from the rest (App. A)
TOP_FRACTION = 0.1
DESCRIPTION_TOKENS = 48
# Character budgets of one prompt (its beginning and end are kept): 20 examples must fit a small describer's context.
DESCRIBER_EXAMPLE_CHARS = 600
JUDGE_EXAMPLE_CHARS = 1500


def prompt_text(prompt) -> str:
    """A prompt as the LLMs read it: a single user message as its text, a conversation as `Role: text` lines."""
    messages = as_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"].strip()
    return "\n".join(f"{message['role'].capitalize()}: {message['content'].strip()}" for message in messages)


def shorten(text: str, max_chars: int) -> str:
    """`text` within `max_chars`, keeping its beginning and its end (a conversation's last turn matters most)."""
    if len(text) <= max_chars:
        return text
    half = (max_chars - 5) // 2
    return text[:half].rstrip() + " ... " + text[len(text) - half:].lstrip()


def distinct_prompts(prompts) -> tuple[list, list]:
    """(texts, rows): each distinct prompt's text once, with the row of its first pair."""
    first = {}
    for row, prompt in enumerate(prompts):
        first.setdefault(prompt_text(prompt), row)
    return list(first), list(first.values())


def describer_prompt(examples) -> str:
    """Fig. 4 filled with `examples` (prompt texts), numbered."""
    listed = "\n\n".join(f"Prompt {i}:\n{shorten(text, DESCRIBER_EXAMPLE_CHARS)}"
                         for i, text in enumerate(examples, start=1))
    return DESCRIBER_PROMPT.replace("{examples}", listed)


def judge_prompt(description: str, text: str) -> str:
    """Fig. 5 for one (description, prompt)."""
    return JUDGE_PROMPT.replace("{description}", description).replace(
        "{input_text}", shorten(text, JUDGE_EXAMPLE_CHARS))


def parse_description(raw: str) -> tuple[str, bool]:
    """(description, followed_format) from a describer's answer.

    Fig. 4 ends inside the answer format (`-"`), so a model that follows it writes `-"feature"`, or continues with
    `feature"`. On the first non-empty line: `-"..."` anywhere wins; otherwise leading labels (`The feature you
    identified is:`, repeated or not) are dropped, then a quote at the start opens the description, a text before the
    first quote is the description when the quotes are odd in number (the closing one), and the first quoted span when
    they are even. A line without quotes (a model that ignores the format) is taken whole, without list markers,
    surrounding quotes and a final period.
    """
    line = next((line for line in raw.strip().splitlines() if line.strip(" -*\"'")), "").strip()
    quoted = re.search(r'-\s*"([^"]+)"', line)
    if quoted:
        return _clean(quoted.group(1)), True
    while (label := re.match(r'"?[^":]*:\s*', line)) and line[label.end():].strip(' "'):
        line = line[label.end():]
    if '"' not in line:
        return _clean(line), False
    if line.startswith('"'):
        return _clean(line[1:].split('"')[0]), True
    parts = line.split('"')
    return _clean(parts[0] if len(parts) % 2 == 0 else parts[1]), True


def _clean(text: str) -> str:
    return " ".join(text.strip().lstrip("-*• ").strip("\"'*` ").rstrip(".").split())


def fidelity_sample(weights: torch.Tensor, generator: torch.Generator, per_stratum: int = SAMPLES_PER_STRATUM,
                    top_fraction: float = TOP_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, from_top) of App. A's stratified sample for one expert: `per_stratum` prompts drawn without
    replacement from the top `top_fraction` of its routing weights (ceil, ties to the lower index as in
    `metrics.top_examples`) and as many from the rest; a stratum with fewer prompts is taken whole."""
    order = torch.sort(weights, descending=True, stable=True).indices
    num_top = top_percent_count(len(weights), 100 * top_fraction)
    strata = (order[:num_top], order[num_top:])
    picked = [stratum[torch.randperm(len(stratum), generator=generator)[:per_stratum]] for stratum in strata]
    return torch.cat(picked), torch.cat([torch.ones(len(picked[0]), dtype=torch.bool),
                                         torch.zeros(len(picked[1]), dtype=torch.bool)])


def describe_experts(describer: TextGenerator, routing: torch.Tensor, texts: list,
                     top_n: int = TOP_EXAMPLES) -> list[dict]:
    """Per expert: its top-n prompts (by routing weight over distinct prompts), the describer's raw answer and the
    parsed description. routing (M, K) over the M distinct `texts`."""
    top = top_examples(routing, top_n).tolist()  # (K, n)
    raw = describer.generate([describer_prompt([texts[i] for i in rows]) for rows in top],
                             max_new_tokens=DESCRIPTION_TOKENS)
    experts = []
    for rows, answer in zip(top, raw):
        description, followed = parse_description(answer)
        experts.append({"description": description, "followed_format": followed, "raw_output": answer,
                        "top_examples": [texts[i] for i in rows]})
    return experts


def score_descriptions(judge: TextGenerator, descriptions: list, routing: torch.Tensor, texts: list,
                       seed: int = 0, per_stratum: int = SAMPLES_PER_STRATUM) -> list[dict]:
    """Per expert: description fidelity (Eq. 19) of its description on its stratified sample of the distinct test
    `texts` (routing (M, K)), with the judgments. One expert's prompts are judged together, so a local judge runs the
    shared description once per batch."""
    generator = torch.Generator().manual_seed(seed)
    samples = [fidelity_sample(routing[:, k], generator, per_stratum) for k in range(routing.shape[1])]
    judgments = judge.judge([judge_prompt(description, texts[i]) for description, (rows, _) in
                             zip(descriptions, samples) for i in rows.tolist()])
    experts = torch.cat([torch.full((len(rows),), k) for k, (rows, _) in enumerate(samples)])
    weights = torch.cat([routing[rows, k] for k, (rows, _) in enumerate(samples)])
    answers = torch.tensor([j.answer for j in judgments], dtype=torch.float64)
    fidelity = description_fidelity(answers, weights, experts, routing.shape[1], per_expert=True)
    scored, start = [], 0
    for k, (rows, from_top) in enumerate(samples):
        own = judgments[start:start + len(rows)]
        start += len(rows)
        scored.append({"description_fidelity": fidelity[k].item(), "sample": rows.tolist(),
                       "sample_from_top": from_top.tolist(), "judgments": [j.answer for j in own],
                       "yes_probabilities": [j.probability for j in own],
                       "yes_rate_top": _mean([j.answer for j, top in zip(own, from_top) if top]),
                       "yes_rate_rest": _mean([j.answer for j, top in zip(own, from_top) if not top])})
    return scored


def _mean(values) -> float | None:
    return sum(values) / len(values) if values else None


def interpret_experts(describer: TextGenerator, judge: TextGenerator, describe_routing: torch.Tensor,
                      describe_texts: list, measure_routing: torch.Tensor, measure_texts: list, *, seed: int = 0,
                      random_baseline: bool = True, top_n: int = TOP_EXAMPLES,
                      per_stratum: int = SAMPLES_PER_STRATUM) -> dict:
    """Descriptions from the describing prompts (validation), fidelity on the measuring prompts (test), and the random
    baseline: the describer sees the describing prompts shuffled (seeded) while the router's weights stay as they
    are, so each expert is described from prompts unrelated to it. Routing (M, K) over distinct prompt texts.

    Returns {"experts": [...], "description_fidelity": mean over experts (Eq. 20), "routing_share": mean routing
    weight of each expert over the measuring prompts, "random_baseline": {...} (when asked), "notes": [...] (what
    a small set could not give)}.
    """
    experts = describe_experts(describer, describe_routing, describe_texts, top_n)
    scores = score_descriptions(judge, [e["description"] for e in experts], measure_routing, measure_texts, seed,
                                per_stratum)
    share = measure_routing.float().mean(dim=0).tolist()
    for k, (expert, score) in enumerate(zip(experts, scores)):
        expert.update(score, expert=k, routing_share=share[k])
    result = {"experts": experts, "description_fidelity": _mean([e["description_fidelity"] for e in experts]),
              "routing_share": share, "notes": sample_notes(len(describe_texts), len(measure_texts), top_n,
                                                            per_stratum)}
    if random_baseline:
        shuffled = torch.randperm(len(describe_texts), generator=torch.Generator().manual_seed(seed)).tolist()
        baseline = describe_experts(describer, describe_routing, [describe_texts[i] for i in shuffled], top_n)
        baseline_scores = score_descriptions(judge, [e["description"] for e in baseline], measure_routing,
                                             measure_texts, seed, per_stratum)
        for expert, score in zip(baseline, baseline_scores):
            expert.update(score)
        result["random_baseline"] = {"experts": baseline, "description_fidelity": _mean(
            [e["description_fidelity"] for e in baseline])}
    return result


def sample_notes(num_describe: int, num_measure: int, top_n: int, per_stratum: int) -> list[str]:
    """What a small set changes in the protocol, in words (an empty list when the set is large enough)."""
    notes = []
    if num_describe < top_n:
        notes.append(f"only {num_describe} distinct describing prompts: each expert is described from all of them, "
                     f"ranked (the paper shows {top_n}).")
    num_top = top_percent_count(num_measure, 100 * TOP_FRACTION)
    if num_top < per_stratum or num_measure - num_top < per_stratum:
        notes.append(f"only {num_measure} distinct measuring prompts: each fidelity sample holds "
                     f"{min(num_top, per_stratum)} from the top 10% and {min(num_measure - num_top, per_stratum)} from "
                     f"the rest ({per_stratum} + {per_stratum} asked; App. A: {SAMPLES_PER_STRATUM} + "
                     f"{SAMPLES_PER_STRATUM}).")
    return notes


def expert_table_markdown(interpretation: dict) -> str:
    """The paper's Table 3 / Table 11 form: one row per expert (description, fidelity, specialization, routing
    share), then the mean fidelity and the random baseline's."""
    lines = ["| ID | Natural Language Description | Description Fidelity (↑) | Expert Specialization (↑) | "
             "Routing share |", "|---|---|---|---|---|"]
    for expert in interpretation["experts"]:
        description = expert["description"].replace("|", "/") or "(no description)"
        specialization = expert.get("expert_specialization")
        lines.append(f"| {expert['expert']} | {description} | {expert['description_fidelity']:.2f} | "
                     f"{'-' if specialization is None else f'{100 * specialization:.2f}'} | "
                     f"{100 * expert['routing_share']:.1f}% |")
    summary = f"\nMean description fidelity {interpretation['description_fidelity']:.3f}"
    if "random_baseline" in interpretation:
        summary += (f"; random baseline (describer shown shuffled prompts, router fixed) "
                    f"{interpretation['random_baseline']['description_fidelity']:.3f}")
    lines.append(summary + ".")
    lines += [f"Note: {note}" for note in interpretation["notes"]]
    return "\n".join(lines) + "\n"


def routing_by_prompt(head, features) -> tuple[torch.Tensor, list]:
    """(routing (M, K), texts) of the distinct prompts of `features` (pair features with a `prompt` column)."""
    texts, rows = distinct_prompts(features["prompt"])
    outputs = head_outputs(head, as_training_features(features.select(rows)))
    return outputs["routing_weights"].float().cpu(), texts


def interpret_head(head, describing, measuring, describer: TextGenerator, judge: TextGenerator, *, seed: int = 0,
                   random_baseline: bool = True, top_n: int = TOP_EXAMPLES,
                   per_stratum: int = SAMPLES_PER_STRATUM) -> dict:
    """`interpret_experts` for a trained head on two sets of pair features with a `prompt` column: experts are
    described from `describing` (validation) and measured on `measuring` (test), where each expert's top-10% expert
    specialization (Eq. 12, on the measuring pairs) is added beside its fidelity, and the mixture's accuracy. The
    random baseline's specialization shuffles the measuring pairs against the fixed routing weights, as its
    describer sees shuffled prompts (the paper's Table 4 reports both for its random row)."""
    result = interpret_experts(describer, judge, *routing_by_prompt(head, describing),
                               *routing_by_prompt(head, measuring), seed=seed, random_baseline=random_baseline,
                               top_n=top_n, per_stratum=per_stratum)
    outputs = {k: v.cpu() for k, v in head_outputs(head, as_training_features(measuring)).items()}
    chosen, rejected, routing = (outputs["chosen_expert_rewards"], outputs["rejected_expert_rewards"],
                                 outputs["routing_weights"])
    specialization = expert_specialization_top(chosen, rejected, routing, per_expert=True)
    for expert, value in zip(result["experts"], specialization.tolist()):
        expert["expert_specialization"] = value
    result["expert_specialization"] = specialization.nanmean().item()
    if random_baseline:  # the same shuffle for specialization: each routing row meets another pair's rewards
        shuffled = torch.randperm(len(routing), generator=torch.Generator().manual_seed(seed))
        result["random_baseline"]["expert_specialization"] = expert_specialization_top(
            chosen[shuffled], rejected[shuffled], routing).item()
    result["accuracy"] = pairwise_accuracy(mixture_reward(routing, chosen), mixture_reward(routing, rejected)).item()
    return result


def interpret_checkpoint(checkpoint, dataset, *, generator: str = "local", generator_model: str | None = None,
                         judge: str | None = None, judge_model: str | None = None, format=None, split="test",
                         max_pairs=None, seed: int = 0, cache_dir=None, generation_cache=None, max_length: int = 1024,
                         random_baseline: bool = True, output_dir=None, overwrite: bool = False) -> dict:
    """`smoe interpret`: describes and checks every expert of `checkpoint` on `dataset` (split by prompt into a
    describing and a measuring half, as `smoe eval` labels and measures), writes interpretation.json (with the
    command) and interpretation.md to `output_dir` (default: the checkpoint folder), and puts the expert table into
    the checkpoint's model card when the checkpoint is a local folder. The judge defaults to the describer. Results
    in the checkpoint folder are its own and are refreshed; in another `output_dir`, earlier ones are replaced only
    with `overwrite`."""
    local = Path(checkpoint).is_dir()
    if output_dir is None and not local:
        raise InputError(f"output_dir: {checkpoint} is not a local folder; pass --output-dir for the results.")
    if output_dir is not None:
        output_dir = Path(output_dir).expanduser()
        if output_dir.exists() and not output_dir.is_dir():
            raise InputError(f"output_dir: {output_dir} is a file; give a folder path.")
        for name in ("interpretation.json", "interpretation.md"):
            check_output_file(output_dir / name, Path(name).suffix, overwrite=overwrite, flag="--output-dir")
    model, tokenizer = load_checkpoint(checkpoint)
    pairs = load_pairs(dataset, format, split=split, max_pairs=max_pairs, seed=seed)
    features = EmbeddingCache(model, tokenizer, cache_dir=cache_dir, max_length=max_length).pair_features(pairs)
    describer, judging = load_describer_and_judge(generator, generator_model, judge, judge_model, generation_cache)
    result = interpret_head(model.head, *prompt_halves(features, pairs, seed), describer, judging, seed=seed,
                            random_baseline=random_baseline)
    result.update(describer=describer.identity, judge=judging.identity, pairs=len(pairs))
    output = Path(output_dir or checkpoint)
    output.mkdir(parents=True, exist_ok=True)
    table = expert_table_markdown(result)
    write_text_atomic(output / "interpretation.md", f"`{run_command()}`\n\n{table}")
    job = {"checkpoint": str(checkpoint), "dataset": str(dataset), "format": format, "split": split,
           "max_pairs": max_pairs, "seed": seed, "max_length": max_length, "generator": generator,
           "generator_model": generator_model, "judge": judge, "judge_model": judge_model,
           "random_baseline": random_baseline}
    save_run(output, job, result, "interpretation.json")
    if local:
        write_expert_table(checkpoint, table, dataset_label(dataset))
    return result


def dataset_label(dataset) -> str:
    """How a card names the data: a Hub id as is, a local file by its name only (no local paths in a card)."""
    return f"`{dataset}`" if is_hub_id(str(dataset)) else f"`{Path(dataset).name}`"


def judge_agreement(judge: TextGenerator, texts: list, categories: list, descriptions: dict) -> dict:
    """How well the judge itself reads a known feature: each category's hand-written `descriptions[category]`
    against every prompt of `texts` (categories known). Returns the YES rate of each description on each category
    and `ideal_fidelity`: the description fidelity (Eq. 19-20) an ideal router would get with this judge, one expert
    per category routing exactly its category's prompts (weight 1, else 0). 1.0 means the judge says YES to exactly
    the right prompts; the gap below 1 is what the judge alone costs every model's fidelity."""
    names = sorted(descriptions)
    judgments = judge.judge([judge_prompt(descriptions[name], text) for name in names for text in texts])
    answers = torch.tensor([j.answer for j in judgments], dtype=torch.float64).view(len(names), len(texts))
    membership = torch.tensor([[category == name for category in categories] for name in names], dtype=torch.float64)
    experts = torch.arange(len(names)).repeat_interleave(len(texts))
    fidelity = description_fidelity(answers.flatten(), membership.flatten(), experts, len(names), per_expert=True)
    yes_rates = {name: {category: _mean(answers[i, [c == category for c in categories]].tolist())
                        for category in sorted(set(categories))} for i, name in enumerate(names)}
    return {"descriptions": descriptions, "yes_rates": yes_rates, "ideal_fidelity": fidelity.mean().item(),
            "ideal_fidelity_per_category": dict(zip(names, fidelity.tolist())), "prompts": len(texts)}
