"""PersonalLLM (paper App. H): each prompt's responses scored by ten reward models, labelled by simulated users."""

import math
import re
from collections.abc import Callable, Iterator

from datasets import Dataset

from ...errors import InputError
from ..schema import Skip, make_pair, read_score, read_text, user_turn
from ..users import PERSONAL_LLM_REWARD_MODELS, personal_llm_users

COLUMNS = ("prompt", "response_1", "response_2")


def pairs(dataset: Dataset, *, seed: int, num_users: int = 5, alpha: float = 0.3,
          users: dict | None = None) -> Iterator[dict | Skip]:
    """Each prompt has responses `response_<k>` scored by the reward models `PERSONAL_LLM_REWARD_MODELS`.

    A user scores a response by the weighted sum of the ten reward models' scores, each standardized first (z-score
    over every response in the loaded data: PersonalLLM standardizes with its train-set mean and deviation, which
    this equals on the train split). Each (prompt, user) gives one pair: the user's best response over the worst.
    Users are `personal_llm_users(num_users, alpha=alpha, seed=seed)` unless given as `users` (reuse the same users
    for the adaptation and evaluation splits). Records with a missing (null or NaN) score are dropped (counted) and
    left out of the standardization.
    """
    users = users or personal_llm_users(num_users, alpha=alpha, seed=seed)
    for user, weights in users.items():
        unknown = sorted(set(weights) - set(PERSONAL_LLM_REWARD_MODELS))
        if unknown:
            raise InputError(f"user {user!r} weights unknown reward models {unknown}.")
    responses = [name for name in dataset.column_names if re.fullmatch(r"response_\d+", name)]
    scores = {(response, model): f"{response}_{model}" for response in responses
              for model in PERSONAL_LLM_REWARD_MODELS}
    missing = [column for column in scores.values() if column not in dataset.column_names]
    if missing:
        raise InputError(f"missing reward column(s) {missing}.")
    records = []  # per record: its prompt, its response texts, and each response's scores (None where one is missing)
    for index, record in enumerate(dataset):
        records.append((user_turn(read_text(record["prompt"], index, "prompt")),
                        [read_text(record[response], index, response) for response in responses],
                        [{model: read_score(record[scores[response, model]], index, scores[response, model])
                          for model in PERSONAL_LLM_REWARD_MODELS} for response in responses]))
    standardize = {model: _standardizer([values[model] for _, _, rows in records for values in rows
                                         if values[model] is not None]) for model in PERSONAL_LLM_REWARD_MODELS}
    for prompt, texts, rows in records:
        if any(value is None for values in rows for value in values.values()):
            yield Skip("records with missing (null or NaN) reward scores")
            continue
        standardized = [{model: standardize[model](values[model]) for model in PERSONAL_LLM_REWARD_MODELS}
                        for values in rows]
        for user, weights in users.items():
            utility = [sum(weights.get(model, 0.0) * z[model] for model in PERSONAL_LLM_REWARD_MODELS)
                       for z in standardized]
            if any(math.isnan(value) for value in utility):
                yield Skip("(prompt, user) pairs whose utility is not a number (an infinite reward score)")
                continue
            best = max(range(len(texts)), key=utility.__getitem__)
            worst = min(range(len(texts)), key=utility.__getitem__)
            if utility[best] == utility[worst]:
                yield Skip("(prompt, user) pairs where every response scores the same")
                continue
            yield make_pair(prompt, texts[best], texts[worst], user=user)


def _standardizer(values: list) -> Callable[[float], float]:
    if not values:  # every score of this model is missing: every record is dropped, nothing is standardized
        return lambda value: value
    mean = sum(values) / len(values)
    deviation = (sum((value - mean) ** 2 for value in values) / len(values)) ** 0.5 or 1.0
    return lambda value: (value - mean) / deviation
