"""Linear probes of cached features: what a linear map can read from a representation, fitted to its optimum.

They answer diagnostic questions before any mixture is trained (is the category in the router's input? does each
category's preference live in the response representations, and do the categories agree?), and give backbone
tuning its starting head (`backbone_tuning`: linear probe, then fine-tune).
"""

import torch

from ..features import as_training_features
from ..losses import expert_losses


def fit_linear_probe(inputs: torch.Tensor, outputs: int, loss_of, l2: float = 1e-3, bias: bool = True):
    """The linear map of `inputs` minimising `loss_of(predictions) + l2 * |W|^2`, fitted full-batch by L-BFGS. The
    problem is convex, so the probe is its optimum: no seed, and no step budget that leaves a well-separated
    direction unconverged."""
    probe = torch.nn.Linear(inputs.shape[1], outputs, bias=bias)
    torch.nn.init.zeros_(probe.weight)
    if bias:
        torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = loss_of(probe(inputs)) + l2 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return probe.requires_grad_(False)


L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths (on standardised inputs) the cross-validation chooses from


def bradley_terry_probe(differences: torch.Tensor, scale: torch.Tensor | None = None, folds: int = 5) -> torch.Tensor:
    """The weight w of the linear Bradley-Terry reward r(x, y) = w . h(x, y) fitted on (N, H) differences
    h(x, y_w) - h(x, y_l), each dimension divided by `scale` (default: its standard deviation) for the fit and w
    returned in the original units. No bias: it cancels in the margin.

    With fewer pairs than dimensions the pairs are separable and an unregularised probe only memorises them, so the
    ridge strength is chosen from `L2_GRID` by `folds`-fold cross-validation of the Bradley-Terry loss on these
    pairs alone (interleaved folds; the stronger one on a tie): no validation or test pair is read."""
    scale = differences.std(0).clamp_min(1e-6) if scale is None else scale
    inputs = differences / scale

    def fit(rows, l2):
        return fit_linear_probe(inputs[rows], 1, bradley_terry_loss, l2=l2, bias=False)

    rows = torch.arange(len(inputs))
    if len(rows) < folds:
        return fit(rows, max(L2_GRID)).weight[0] / scale
    held_out_loss = {l2: sum(bradley_terry_loss(fit(rows[rows % folds != fold], l2)(inputs[rows % folds == fold]))
                             for fold in range(folds)) for l2 in L2_GRID}
    best = min(L2_GRID, key=lambda l2: (held_out_loss[l2], -l2))
    return fit(rows, best).weight[0] / scale


def bradley_terry_loss(margins: torch.Tensor) -> torch.Tensor:
    """Mean -log sigma(margin) over pairs whose margin is r(x, y_w) - r(x, y_l)."""
    return expert_losses(margins, torch.zeros_like(margins)).mean()


def category_probe(features: dict) -> dict:
    """Is the latent category in the router's input at all? A linear probe (multinomial logistic regression on the
    standardised prompt representations) fitted on train and scored on validation, against the majority-class rate.
    A low probe accuracy means no router on these features can recover the categories."""
    names = sorted(set(features["train"]["category"]))
    inputs, labels = {}, {}
    for split in ("train", "validation"):
        inputs[split] = as_training_features(features[split])[:]["prompt_embedding"].float()
        labels[split] = torch.tensor([names.index(c) for c in features[split]["category"]])
    mean, scale = inputs["train"].mean(0), inputs["train"].std(0).clamp_min(1e-6)
    probe = fit_linear_probe((inputs["train"] - mean) / scale, len(names),
                             lambda logits: torch.nn.functional.cross_entropy(logits, labels["train"]))
    predicted = probe((inputs["validation"] - mean) / scale).argmax(-1)
    majority = torch.bincount(labels["validation"], minlength=len(names)).max() / len(labels["validation"])
    return {"probe_accuracy": (predicted == labels["validation"]).float().mean().item(),
            "majority_rate": majority.item()}


def preference_probes(features: dict) -> dict:
    """Does each category's preference live in the features, and do the categories agree? A linear Bradley-Terry
    probe (`bradley_terry_probe`) fitted on the train pairs of each category, and one on all of them, each scored
    on every category's validation pairs: {trained on: {measured on: accuracy}}. A diagonal well above 50% with
    off-diagonal entries below it means the preferences are there but conflict: a single head cannot serve them,
    a router that separates the categories can."""
    def differences(split):
        columns = as_training_features(split)[:]
        return columns["chosen_embedding"].float() - columns["rejected_embedding"].float()

    train, validation = features["train"], features["validation"]
    names = sorted(set(train["category"]))
    every_pair = differences(train)
    scale = every_pair.std(0).clamp_min(1e-6)
    measured = {name: differences(validation.filter(lambda row: row["category"] == name)) for name in names}
    probes = {}
    for trained_on in ["all", *names]:
        pairs = every_pair if trained_on == "all" else differences(
            train.filter(lambda row: row["category"] == trained_on))
        weight = bradley_terry_probe(pairs, scale)
        probes[trained_on] = {name: (inputs @ weight > 0).float().mean().item() for name, inputs in measured.items()}
    return probes
