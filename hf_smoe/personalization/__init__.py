"""Serving each user their own reward from one set of experts: adapting the router to a user's pairs (`adaptation`:
Hedge, HyRe, `smoe adapt`), storing one small router file per user (`routers`), and steering by routing intervention
(`steering`, §5.2). The experts and the backbone stay frozen throughout: the room reads trained heads and cached
features and trains nothing but routers, so it needs no training code and sits beside training, not above it.
"""

from .adaptation import adapt_checkpoint, adapt_router, adapt_to_pairs, expert_rewards_of, routed_accuracy
from .routers import load_router, score_users, set_router
from .steering import STEERING_WEIGHTS, random_target_report, steering_report, target_experts

__all__ = ["STEERING_WEIGHTS", "adapt_checkpoint", "adapt_router", "adapt_to_pairs", "expert_rewards_of", "load_router",
           "random_target_report", "routed_accuracy", "score_users", "set_router",
           "steering_report", "target_experts"]
