"""`smoe bench serve`: the reward server under load, coalescing against naive serving in the same run.

The server runs for real (uvicorn on 127.0.0.1 in this process) over a checkpoint of the backbone with `num_users`
adapted-looking routers; client threads post native `/v1/rewards` requests of 1, 16 or 64 inputs at concurrency 1,
8 and 32, with one user or a different user per request. The same load runs against the same server with coalescing
off (every request its own backbone pass): the baseline. Every answer is checked against `smoe_reward` on a sample.
"""

import copy
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..features import training_encoding
from ..personalization.routers import save_router
from ..rewards import smoe_reward
from ..runtime import load_backbone_model
from ..serve import RewardService, create_app, serving_in_background
from .measuring import benchmark_pairs

SERVING_MAX_LENGTH = 256  # the demo set's texts are ~80 tokens: nothing is cut


def bench_serve(backbone: str, inputs: tuple = (1, 16, 64), concurrency: tuple = (1, 8, 32), num_users: int = 100,
                texts_per_run: int = 128, seed: int = 0) -> dict:
    """Requests/s, tokens/s and p50/p99 latency per (inputs per request, concurrency), coalesced and naive, with one
    user; and with `num_users` distinct users at the highest concurrency, one input per request. Each run sends
    about `texts_per_run` texts (at least one request per client)."""
    import requests

    pairs = benchmark_pairs(max(texts_per_run, max(inputs) * max(concurrency)), seed)
    samples = [(prompt, response) for prompt, response in zip(pairs["prompt"], pairs["chosen"])]
    with tempfile.TemporaryDirectory(prefix="smoe-bench-serve-") as scratch:
        checkpoint, users = bench_checkpoint(backbone, Path(scratch), num_users, seed)
        reference = smoe_reward(checkpoint, routers={user: Path(scratch) / "routers" / f"{user}.safetensors"
                                                     for user in users[:4]})
        service = RewardService(checkpoint, Path(scratch) / "routers")
        tokens = [len(service.reward.encode(*sample)["input_ids"]) for sample in samples]
        results = {"texts": len(samples), "mean_tokens_per_text": statistics.mean(tokens), "runs": []}
        for coalesce in (True, False):
            app = create_app(service, coalesce=coalesce, max_queue_tokens=2**40)  # measure, never refuse
            with serving_in_background(app) as url, requests.Session() as session:
                for per_request in inputs:
                    for clients in concurrency:
                        results["runs"].append(load_run(session, url, samples, tokens, per_request, clients,
                                                        texts_per_run, [None], coalesce))
                if coalesce:
                    for user_list in ([users[0]], users):
                        results["runs"].append(load_run(session, url, samples, tokens, 1, max(concurrency),
                                                        texts_per_run, user_list, coalesce))
                results["checked" if coalesce else "checked_naive"] = checked_against(
                    session, url, reference, samples[:8], users[:4])
        summarize(results, max(concurrency), num_users)
    return results


def bench_checkpoint(backbone: str, folder: Path, num_users: int, seed: int) -> tuple:
    """A checkpoint of `backbone` (fresh head, K = 5) and `num_users` routers, each the head's router with
    perturbed weights (adapted routers are the same size and cost)."""
    from ..training import save_checkpoint

    model, tokenizer = load_backbone_model(backbone, "sparse", 5, seed)
    save_checkpoint(model, tokenizer, folder / "checkpoint", training_encoding(SERVING_MAX_LENGTH))
    generator = torch.Generator().manual_seed(seed)
    users = [f"user{index:03d}" for index in range(num_users)]
    for user in users:
        router = copy.deepcopy(model.head.router)
        with torch.no_grad():
            for parameter in router.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator).to(parameter))
        save_router(router, folder / "routers" / f"{user}.safetensors", model)
    return folder / "checkpoint", users


def load_run(session, url: str, samples: list, tokens: list, per_request: int, clients: int, texts: int,
             users: list, coalesce: bool) -> dict:
    """`clients` threads posting requests of `per_request` samples (request i as users[i % len(users)]; None: the
    checkpoint's own router) until about `texts` samples are sent; the run's rates and latencies. `users` in the
    record counts the distinct named users."""
    count = max(clients, texts // per_request)
    bodies = [{"items": [{"prompt": samples[(i * per_request + j) % len(samples)][0],
                          "response": samples[(i * per_request + j) % len(samples)][1],
                          "user": users[i % len(users)]} for j in range(per_request)]} for i in range(count)]
    sent_tokens = sum(tokens[(i * per_request + j) % len(samples)] for i in range(count) for j in range(per_request))
    latencies = []

    def post(body):
        start = time.perf_counter()
        answer = session.post(f"{url}/v1/rewards", json=body, timeout=600)
        answer.raise_for_status()
        latencies.append(time.perf_counter() - start)

    post(bodies[0])  # warm-up, not timed
    latencies.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, bodies))
    seconds = time.perf_counter() - start
    return {"coalesce": coalesce, "inputs_per_request": per_request, "concurrency": clients,
            "users": len({user for user in users if user is not None}), "requests": count, "seconds": seconds,
            "requests_per_s": count / seconds,
            "tokens_per_s": sent_tokens / seconds, "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99)}


def checked_against(session, url: str, reference, samples: list, users: list) -> float:
    """The largest |served - smoe_reward| over `samples`, each sent as a request of its own with a user each."""
    items = [{"prompt": prompt, "response": response, "user": users[i % len(users)]}
             for i, (prompt, response) in enumerate(samples)]
    served = session.post(f"{url}/v1/rewards", json={"items": items}, timeout=600).json()["rewards"]
    expected = [reference(prompts=[item["prompt"]], completions=[item["response"]], user=[item["user"]])[0]
                for item in items]
    return max(abs(a - b) for a, b in zip(served, expected))


def summarize(results: dict, clients: int, num_users: int) -> None:
    """The two ratios the server is held to: coalesced vs naive requests/s at the highest concurrency with one
    input per request, and the time of `num_users` distinct users against one named user for the same load."""
    def run(coalesce: bool, users: int) -> dict:
        return next(r for r in results["runs"] if r["coalesce"] == coalesce and r["inputs_per_request"] == 1
                    and r["concurrency"] == clients and r["users"] == users)

    results[f"coalesced_vs_naive_requests_per_s_at_{clients}"] = (run(True, 0)["requests_per_s"]
                                                                  / run(False, 0)["requests_per_s"])
    results[f"time_{num_users}_users_vs_1_user"] = run(True, num_users)["seconds"] / run(True, 1)["seconds"]


def percentile(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
