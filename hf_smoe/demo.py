"""Interim `smoe demo`: the whole model on a tiny random backbone and a small generated preference set.

What it shows is the mechanics, not a result: a 2-layer randomly initialised Llama and a word-level tokenizer built
in code, 4 latent prompt categories whose annotators want different response properties, features encoded once
through the frozen backbone, and the head trained with each preset's objective. The real demo (SmolLM2 backbone,
Trainer, embedding cache) replaces this one.
"""

import json
import os
import random

import torch

from . import SMoERewardModel, encode_pair
from .losses import moe_preference_loss, preset_lambdas
from .testing import tiny_llama, word_tokenizer

# category -> (its prompt vocabulary, the response property its annotators prefer, the one they reject)
CATEGORIES = {
    "animals": (["cat", "dog", "kind", "good"], "kind", "rude"),
    "weather": (["sun", "rain", "today", "bad"], "short", "long"),
    "coding": (["code", "math", "question", "answer"], "long", "short"),
    "writing": (["poem", "story", "please", "thanks"], "rude", "kind"),
}
OPENERS = ["sure", "yes", "here is", "because"]


def generate_pairs(num_pairs: int, label_noise: float, seed: int) -> list:
    """Seeded synthetic pairs: the category is latent (never shown to the model), preferences depend on it."""
    rng = random.Random(seed)
    pairs = []
    for index in range(num_pairs):
        category = list(CATEGORIES)[index % len(CATEGORIES)]
        vocabulary, wanted, unwanted = CATEGORIES[category]
        prompt = " ".join(rng.choice(vocabulary) for _ in range(5)) + " ?"
        opener = rng.choice(OPENERS)
        chosen, rejected = f"{opener} a {wanted} answer .", f"{opener} a {unwanted} answer ."
        if rng.random() < label_noise:
            chosen, rejected = rejected, chosen
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "category": category})
    return pairs


@torch.no_grad()
def encode_features(model, tokenizer, pairs) -> dict:
    """One frozen-backbone pass per response; the prompt representation comes from the chosen response's pass."""
    features = {}
    for side in ("chosen", "rejected"):
        batch = tokenizer.pad([encode_pair(tokenizer, p["prompt"], p[side]) for p in pairs], return_tensors="pt")
        out = model(**batch)
        features[side] = out.response_embeddings
        features.setdefault("prompt", out.prompt_embeddings)
    return features


def train_head(model, features, preset: str, epochs: int, seed: int) -> None:
    """The paper's optimiser settings (AdamW, lr 2e-3 experts / 5e-4 router, batch 16) on cached features."""
    torch.manual_seed(seed)
    head, lambdas = model.head, preset_lambdas(preset)
    optimizer = torch.optim.AdamW([{"params": head.experts.parameters(), "lr": 2e-3},
                                   {"params": head.router.parameters(), "lr": 5e-4}])
    head.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(features["prompt"])).split(16):
            routing = head.router(features["prompt"][batch])
            terms = moe_preference_loss(routing, head.experts(features["chosen"][batch]),
                                        head.experts(features["rejected"][batch]), **lambdas)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
    head.eval()


@torch.no_grad()
def summarize(model, features) -> dict:
    head = model.head
    routing = head.router(features["prompt"])
    chosen, rejected = head.experts(features["chosen"]), head.experts(features["rejected"])
    terms = moe_preference_loss(routing, chosen, rejected, lambda_local=0, lambda_global=0, lambda_div=0)
    margin = ((routing * chosen).sum(-1) - (routing * rejected).sum(-1))
    return {"accuracy": (margin > 0).float().mean().item(), "routing_entropy": terms["local_sparsity"].item(),
            "global_entropy": 0.0 - terms["global_balance"].item(), "expert_corr2": terms["diversity"].item()}


def run_demo(output_dir: str = "outputs/demo", num_pairs: int = 800, epochs: int = 30, seed: int = 0) -> dict:
    tokenizer = word_tokenizer("chatml", extra_words=["answer", "question"])
    backbone = tiny_llama(tokenizer, hidden_size=64, seed=seed)
    pairs = generate_pairs(num_pairs, label_noise=0.05, seed=seed)
    split = int(0.8 * num_pairs)
    print(f"Interim demo: tiny random 2-layer Llama backbone, {num_pairs} generated pairs in "
          f"{len(CATEGORIES)} latent categories (synthetic data, not a benchmark).")
    results, models = {}, {}
    for preset in ("single", "vanilla", "micro", "sparse"):
        torch.manual_seed(seed)
        config = {"num_experts": None if preset == "single" else 4, "preset": preset}
        model = SMoERewardModel.from_backbone(backbone, tokenizer=tokenizer, **config)
        if preset == "single":
            train_features = encode_features(model, tokenizer, pairs[:split])
            test_features = encode_features(model, tokenizer, pairs[split:])
        train_head(model, train_features, preset, epochs, seed)
        results[preset], models[preset] = summarize(model, test_features), model
    print(f"{'preset':<10}{'accuracy':>10}{'routing H':>11}{'global H':>10}{'corr^2':>9}")
    for preset, row in results.items():
        print(f"{preset:<10}{row['accuracy']:>10.3f}{row['routing_entropy']:>11.3f}{row['global_entropy']:>10.3f}"
              f"{row['expert_corr2']:>9.3f}")
    os.makedirs(output_dir, exist_ok=True)
    models["sparse"].save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "demo_results.json"), "w") as f:
        json.dump({"seed": seed, "num_pairs": num_pairs, "epochs": epochs, "results": results}, f, indent=2)
    print(f"Sparse checkpoint written to {output_dir}; load it anywhere with\n"
          f"  AutoModel.from_pretrained({output_dir!r}, trust_remote_code=True)")
    return results

