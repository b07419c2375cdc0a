"""Measuring a trained head: its outputs on cached features and the paper's metrics over a whole set (`evaluate`,
`smoe eval`), linear probes of the features (`probes`), the figures results are shown in (`plots`), and the metrics
as `evaluate` modules (`modules`). It reads features and computes with `hf_smoe.metrics` but trains nothing, so the
trainer, personalization and interpretation all report through it from above.
"""

from .evaluate import (behaviour_metrics, evaluate_checkpoint, evaluate_head, head_outputs, is_evaluation_file,
                       mixture_rewards, prompt_halves, write_evaluation)
from .modules import evaluate_module_path
from .plots import (plot_flip_rates, plot_gains, plot_interpretability_vs_experts, plot_routing_heatmap,
                    plot_weight_shift)
from .probes import bradley_terry_loss, bradley_terry_probe, category_probe, preference_probes

__all__ = ["behaviour_metrics", "bradley_terry_loss", "bradley_terry_probe", "category_probe", "evaluate_checkpoint",
           "evaluate_head", "evaluate_module_path", "head_outputs", "is_evaluation_file", "mixture_rewards",
           "plot_flip_rates", "plot_gains", "plot_interpretability_vs_experts", "plot_routing_heatmap",
           "plot_weight_shift", "preference_probes", "prompt_halves", "write_evaluation"]
