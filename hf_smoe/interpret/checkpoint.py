"""`smoe interpret`: describe and check every expert of a saved checkpoint, and write the results where its readers
look: interpretation.json and .md beside it, and the expert table (the paper's Table 3 form) in its model card."""

from pathlib import Path

from ..data import load_pairs
from ..errors import InputError
from ..evaluation import prompt_halves
from ..features import EmbeddingCache
from ..hub import is_hub_id, write_expert_table
from ..runtime import check_output_file, load_checkpoint, run_command, save_run, write_text_atomic
from .describe import interpret_head
from .generators import load_describer_and_judge


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
