"""`smoe interpret`: describe and check every expert of a saved checkpoint, and write the results where its readers
look: interpretation.json and .md beside it, and the expert table (the paper's Table 3 form) in its model card.
`--check-judge` measures the judge alone first, on the data's known categories."""

import json
import os
import warnings
from pathlib import Path

from ..data import load_pairs
from ..errors import InputError
from ..evaluation import prompt_halves
from ..features import EmbeddingCache
from ..hub import is_hub_id, write_expert_table
from ..runtime import check_output_file, load_checkpoint, run_command, save_run, write_text_atomic
from .describe import distinct_prompts_and_categories, interpret_head
from .generators import judge_spec, load_describer_and_judge, load_judge
from .generators.loading import ENDPOINT_TIMEOUT
from .judge_checks import CHECK_PROMPTS_PER_CATEGORY, judge_agreement, judge_check_prompts, read_descriptions
from .settings import ReadingSettings

RESULTS_FILE = "interpretation.json"


def interpret_checkpoint(checkpoint, dataset, *, generator: str = "local", generator_model: str | None = None,
                         judge: str | None = None, judge_model: str | None = None, format=None, split="test",
                         max_pairs=None, seed: int = 0, cache_dir=None, generation_cache=None,
                         max_length: int | None = None,
                         random_baseline: bool = True, settings: ReadingSettings = ReadingSettings(),
                         output_dir=None, overwrite: bool = False,
                         endpoint_timeout: float | None = ENDPOINT_TIMEOUT) -> dict:
    """`smoe interpret`: describes and checks every expert of `checkpoint` on `dataset` (split by prompt into a
    describing and a measuring half, as `smoe eval` labels and measures), writes interpretation.json (with the
    command) and interpretation.md to `output_dir` (default: the checkpoint folder), and puts the expert table into
    the checkpoint's model card when the checkpoint is a local folder. The judge defaults to the describer; how
    experts are described and judged is `settings` (the job records it). Results in the checkpoint folder are its
    own and are refreshed; in another `output_dir`, earlier ones are replaced only with `overwrite`. The
    generators load before any text is embedded, so a generator that cannot be used costs nothing;
    `endpoint_timeout` is the seconds an endpoint generator may take for one answer."""
    output = output_folder(checkpoint, output_dir, (RESULTS_FILE, "interpretation.md"), overwrite)
    model, tokenizer = load_checkpoint(checkpoint)
    pairs = load_pairs(dataset, format, split=split, max_pairs=max_pairs, seed=seed)
    describer, judging = load_describer_and_judge(generator, generator_model, judge, judge_model, generation_cache,
                                                  timeout=endpoint_timeout)
    cache = EmbeddingCache.of_checkpoint(model, tokenizer, max_length, cache_dir=cache_dir)
    features = cache.pair_features(pairs)
    result = interpret_head(model.head, *prompt_halves(features, pairs, seed), describer, judging, seed=seed,
                            random_baseline=random_baseline, settings=settings)
    result.update(describer=describer.identity, judge=judging.identity, pairs=len(pairs))
    earlier = earlier_record(output / RESULTS_FILE).get("results", {})
    if "judge_check" in earlier:  # a check run before stays beside the interpretation (it records its own job)
        result["judge_check"] = earlier["judge_check"]
    output.mkdir(parents=True, exist_ok=True)
    table = expert_table_markdown(result)
    write_text_atomic(output / "interpretation.md", f"`{run_command()}`\n\n{table}")
    job = {"checkpoint": str(checkpoint), "dataset": str(dataset), "format": format, "split": split,
           "max_pairs": max_pairs, "seed": seed, "max_length": cache.max_length, "generator": generator,
           "generator_model": generator_model, "judge": judge, "judge_model": judge_model,
           "random_baseline": random_baseline, **settings.to_dict()}
    save_run(output, job, result, RESULTS_FILE)
    if Path(checkpoint).is_dir():
        write_card_table(Path(checkpoint), table, dataset_label(dataset), output)
    return result


def write_card_table(checkpoint: Path, table: str, dataset: str, output: Path) -> None:
    """The expert table into the checkpoint's model card; a checkpoint folder that cannot be written keeps its card
    as it is, and one warning says where the table is instead."""
    if not os.access(checkpoint, os.W_OK):
        warnings.warn(f"checkpoint: the folder {checkpoint} is not writable, so its model card keeps no "
                      f"expert table; the table is in {output / 'interpretation.md'}.", stacklevel=3)
        return
    write_expert_table(checkpoint, table, dataset)


def check_checkpoint_judge(checkpoint, dataset, descriptions, *, generator: str = "local",
                           generator_model: str | None = None, judge: str | None = None,
                           judge_model: str | None = None, format=None, split="test", max_pairs=None, seed: int = 0,
                           generation_cache=None, per_category: int = CHECK_PROMPTS_PER_CATEGORY,
                           settings: ReadingSettings = ReadingSettings(), output_dir=None,
                           overwrite: bool = False, endpoint_timeout: float | None = ENDPOINT_TIMEOUT) -> dict:
    """`smoe interpret --check-judge`: how far the judge can be trusted, before the describer and the judge are run
    on every expert. Each category's hand-written line of the `descriptions` file is judged against at most
    `per_category` distinct prompts of each category of the measuring half (seeded), and `judge_agreement`'s figures
    are written as `judge_check` into interpretation.json, keeping what an earlier interpretation wrote there (the
    check records its own command and job, the judge's template among it). With `settings.calibrate_threshold`,
    each description's YES threshold is chosen on as many prompts of the describing half, sampled the same way, and
    the binary figures are reported at it too. Needs only the judge: the checkpoint names where the results go."""
    output = output_folder(checkpoint, output_dir, (RESULTS_FILE,), overwrite)
    pairs = load_pairs(dataset, format, split=split, max_pairs=max_pairs, seed=seed)
    known = sorted({category for category in pairs["category"] if category is not None})
    if not known:
        raise InputError(f"--check-judge: {dataset} has no `category` column to check the descriptions against.")
    descriptions = read_descriptions(descriptions, known)
    describing, measuring = prompt_halves(pairs.remove_columns("prompt"), pairs, seed)  # `smoe interpret`'s halves
    texts, categories = check_prompts(measuring, per_category, seed)
    calibration = check_prompts(describing, per_category, seed) if settings.calibrate_threshold else None
    judging = load_judge(generator, generator_model, judge, judge_model, generation_cache, timeout=endpoint_timeout)
    check = judge_agreement(judging, texts, categories, descriptions, settings.judge_prompt, calibration) | {
        "judge": judging.identity}
    spec, model = judge_spec(generator, generator_model, judge, judge_model)
    job = {"checkpoint": str(checkpoint), "dataset": str(dataset), "format": format, "split": split,
           "max_pairs": max_pairs, "seed": seed, "judge": spec, "judge_model": model, "check_prompts": per_category,
           "judge_prompt": settings.judge_prompt, "calibrate_threshold": settings.calibrate_threshold}
    check |= {"command": run_command(), "job": job}
    output.mkdir(parents=True, exist_ok=True)
    path = output / RESULTS_FILE
    earlier = earlier_record(path)
    if earlier:
        write_text_atomic(path, json.dumps(earlier | {"results": earlier["results"] | {"judge_check": check}},
                                           indent=2, default=str))
    else:
        save_run(output, job, {"judge_check": check}, RESULTS_FILE)
    return check


def check_prompts(half, per_category: int, seed: int) -> tuple[list, list]:
    """(texts, categories) of at most `per_category` distinct prompts of each category of one half (seeded)."""
    return judge_check_prompts(*distinct_prompts_and_categories(half), per_category, seed)


def output_folder(checkpoint, output_dir, names: tuple, overwrite: bool) -> Path:
    """Where `smoe interpret` writes `names`, checked writable before any work: the checkpoint folder (its own
    results, refreshed) or `output_dir`, where earlier files are replaced only with `overwrite`."""
    if output_dir is None:
        if not Path(checkpoint).is_dir():
            raise InputError(f"output_dir: {checkpoint} is not a local folder; pass --output-dir for the results.")
        if not os.access(checkpoint, os.W_OK):
            raise InputError(f"output_dir: the checkpoint folder {checkpoint}, where the results go by default, is "
                             "not writable; pass --output-dir FOLDER for them.")
        return Path(checkpoint)
    output_dir = Path(output_dir).expanduser()
    existing = next(folder for folder in (output_dir, *output_dir.parents) if folder.exists())
    if not existing.is_dir():
        raise InputError(f"output_dir: {existing} is a file; give a folder path.")
    if not os.access(existing, os.W_OK):
        raise InputError(f"output_dir: {existing} is not writable; choose another --output-dir.")
    for name in names:
        check_output_file(output_dir / name, Path(name).suffix, overwrite=overwrite, flag="--output-dir")
    return output_dir


def earlier_record(path: Path) -> dict:
    """The run record an earlier `smoe interpret` wrote at `path`; empty when there is none or it cannot be read."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("results"), dict) else {}


def expert_descriptions(checkpoint) -> dict:
    """{expert: {"description", "distinctive_words", "description_fidelity"}} from the interpretation.json that
    `smoe interpret` wrote beside a local checkpoint; empty when it has not run there."""
    experts = earlier_record(Path(checkpoint) / RESULTS_FILE).get("results", {}).get("experts", [])
    return {expert["expert"]: {key: expert.get(key) for key in ("description", "distinctive_words",
                                                               "description_fidelity")}
            for expert in experts if isinstance(expert, dict) and isinstance(expert.get("expert"), int)}


def dataset_label(dataset) -> str:
    """How a card names the data: a Hub id as is, a local file by its name only (no local paths in a card)."""
    return f"`{dataset}`" if is_hub_id(str(dataset)) else f"`{Path(dataset).name}`"


def expert_table_markdown(interpretation: dict) -> str:
    """The paper's Table 3 / Table 11 form: one row per expert (description, with what is wrong with it when the
    describer never described, its distinctive words, fidelity, fidelity on the judge's P(YES), specialization,
    routing share), then the mean fidelities and the random baseline's."""
    lines = ["| ID | Natural Language Description | Distinctive words | Description Fidelity (↑) | "
             "Fidelity on P(YES) (↑) | Expert Specialization (↑) | Routing share |", "|---" * 7 + "|"]
    for expert in interpretation["experts"]:
        description = expert["description"].replace("|", "/") or "(no description)"
        if expert.get("problem"):
            description += f" *(the describer's answer {expert['problem']})*"
        words = ", ".join(expert.get("distinctive_words", [])).replace("|", "/") or "-"
        on_probability, specialization = expert.get("fidelity_probability"), expert.get("expert_specialization")
        lines.append(f"| {expert['expert']} | {description} | {words} | {expert['description_fidelity']:.2f} | "
                     f"{'-' if on_probability is None else f'{on_probability:.2f}'} | "
                     f"{'-' if specialization is None else f'{100 * specialization:.2f}'} | "
                     f"{100 * expert['routing_share']:.1f}% |")
    summary = f"\nMean description fidelity {mean_fidelities(interpretation)}"
    if "random_baseline" in interpretation:
        summary += (f"; random baseline (describer shown shuffled prompts, router fixed) "
                    f"{mean_fidelities(interpretation['random_baseline'])}")
    lines.append(summary + ".")
    lines += [f"Note: {note}" for note in interpretation["notes"]]
    return "\n".join(lines) + "\n"


def mean_fidelities(interpretation: dict) -> str:
    """'0.123 (on P(YES): 0.456)': the paper's binary mean fidelity first, then the one on P(YES) when known."""
    on_probability = interpretation.get("fidelity_probability")
    return f"{interpretation['description_fidelity']:.3f}" + (
        "" if on_probability is None else f" (on P(YES): {on_probability:.3f})")
