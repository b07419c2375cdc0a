"""Callbacks of the training loop."""

import warnings

from transformers import TrainerCallback


class RoutingCollapseCallback(TrainerCallback):
    """Warns when an evaluation's global entropy falls below `args.collapse_global_entropy`: most prompts go to the
    same few experts (healthy routing keeps the global entropy high)."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        entropy = (metrics or {}).get("eval_global_entropy")
        if entropy is not None and entropy < args.collapse_global_entropy:
            warnings.warn(f"Routing collapse: global entropy {entropy:.3f} < {args.collapse_global_entropy}: most "
                          "prompts go to the same few experts. Raise lambda_global or check the router learning "
                          "rate.", stacklevel=2)
