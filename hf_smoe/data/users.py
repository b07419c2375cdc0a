"""Simulated users (paper App. H): each user weights a set of preference sources (reward models, attributes) with
a seeded Dirichlet draw, and labels a pair by the weighted sum of the sources' scores."""

import random

# PersonalLLM: the ten reward models whose scores a simulated user weights, in the order PersonalLLM's evaluation
# code uses (sorted by name). Reward columns are named `response_<k>_<model>`.
PERSONAL_LLM_REWARD_MODELS = (
    "beaver_7b", "gemma_2b", "gemma_7b", "llama3_sfairx", "mistral_raft", "mistral_ray", "mistral_weqweasdas",
    "oasst_deberta_v3", "oasst_pythia_1b", "oasst_pythia_7b",
)


def dirichlet_users(sources, num_users: int = 5, *, alpha: float = 0.3, seed: int = 0) -> dict:
    """`{"user_<i>": {source: weight}}`, each weight vector a seeded draw from Dirichlet(alpha) over `sources`
    (normalized Gamma(alpha, 1) draws)."""
    rng = random.Random(seed)
    users = {}
    for number in range(num_users):
        draws = [rng.gammavariate(alpha, 1.0) for _ in sources]
        users[f"user_{number}"] = {source: draw / sum(draws) for source, draw in zip(sources, draws)}
    return users


def personal_llm_users(num_users: int = 5, *, alpha: float = 0.3, seed: int = 0) -> dict:
    """Simulated PersonalLLM users: Dirichlet(alpha) weights over `PERSONAL_LLM_REWARD_MODELS` (`dirichlet_users`)."""
    return dirichlet_users(PERSONAL_LLM_REWARD_MODELS, num_users, alpha=alpha, seed=seed)
