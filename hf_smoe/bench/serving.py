"""`smoe bench serve`: the reward server under load, coalescing against naive serving in the same run.

The server runs for real (uvicorn on 127.0.0.1 in this process) over a checkpoint of the backbone with `num_users`
adapted-looking routers; client threads post native `/v1/rewards` requests of 1, 16 or 64 inputs at concurrency 1,
8 and 32, with one user or a different user per request. The same load runs against the same server with coalescing
off (every request its own backbone pass): the baseline. Every answer is checked against `smoe_reward` on a sample.

`smoe bench serve --faults` runs `smoe serve` in a process of its own under a mix of good and bad requests and
clients that leave mid-request, and counts what came back: every good reward must equal `smoe_reward`'s, every bad
request get its 4xx, and the server must neither die nor answer a client's mistake with a 5xx.
"""

import contextlib
import copy
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..features import training_encoding
from ..features.encoding import render_text
from ..personalization.routers import save_router
from ..rewards import smoe_reward
from ..runtime import load_backbone_model
from ..serve import RewardService, create_app, free_port, serving_in_background
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


FAULT_MIX = {"good": 60, "malformed_json": 8, "wrong_type": 8, "unknown_user": 8, "oversize_body": 5,
             "too_many_items": 5, "disconnect": 6}  # shares of the requests a fault run sends
FAULT_STATUS = {"malformed_json": 400, "wrong_type": 422, "unknown_user": 404, "oversize_body": 413,
                "too_many_items": 413}  # what each bad kind must be answered
FAULT_MAX_BODY_MB, FAULT_MAX_ITEMS, FAULT_USERS = 0.25, 16, 4
REWARD_TOLERANCE = 1e-5


def bench_serve_faults(backbone: str, clients: int = 16, seconds: float = 60.0, texts: int = 32,
                       seed: int = 0) -> dict:
    """`smoe serve` (a process of its own) under `clients` threads for `seconds`, each sending a seeded mix
    (`FAULT_MIX`) of good requests over every protocol and bad ones: malformed JSON, wrong types, unknown users,
    bodies over --max-body-mb, more texts than --max-items, and clients that leave mid-request; the good requests
    carry `texts` samples of the demo set. Counts the answers by kind and status, the good requests' latency, the
    good rewards that differ from `smoe_reward` on the sample alone, bad requests answered 5xx, and whether the
    server died; then checks it still serves right and that SIGTERM stops it with exit status 0."""
    import requests

    pairs = benchmark_pairs(texts, seed)
    with tempfile.TemporaryDirectory(prefix="smoe-bench-faults-") as scratch:
        checkpoint, users = bench_checkpoint(backbone, Path(scratch), FAULT_USERS, seed)
        reference = smoe_reward(checkpoint, routers={user: Path(scratch) / "routers" / f"{user}.safetensors"
                                                     for user in users})
        goods = good_requests(reference, pairs, users)
        process, url = started_server(checkpoint, Path(scratch))
        try:
            start = time.perf_counter()
            outcomes = fault_load(url, goods, clients, seconds, seed)
            elapsed = time.perf_counter() - start
            crashed = process.poll() is not None
            with requests.Session() as session:
                checked = float("nan") if crashed else checked_against(
                    session, url, reference, list(zip(pairs["prompt"], pairs["chosen"]))[:8], users)
        finally:
            exit_status = stopped(process)
        log = (Path(scratch) / "server.log").read_text(errors="replace")
    return fault_summary(outcomes, clients, elapsed, crashed, checked, exit_status, log)


def good_requests(reference, pairs, users: list) -> list:
    """(path, body, reward it must get) for each sample through each protocol, the reward `smoe_reward`'s on the
    sample scored alone (the user's router where the protocol carries a user)."""
    tokenizer = reference.tokenizer
    goods = []
    for index, (prompt, response) in enumerate(zip(pairs["prompt"], pairs["chosen"])):
        user = users[index % len(users)]
        with_user, without = (reference(prompts=[prompt], completions=[response], user=[name])[0]
                              for name in (user, None))
        rendered_prompt = render_text(tokenizer, prompt, add_generation_prompt=True)
        conversation = render_text(tokenizer, prompt + [{"role": "assistant", "content": response}],
                                   add_generation_prompt=False)
        goods += [
            ("/v1/rewards", {"items": [{"prompt": prompt, "response": response, "user": user}]}, with_user),
            ("/get_reward", {"query": [rendered_prompt + response + tokenizer.eos_token],
                             "prompts": [rendered_prompt], "labels": [user]}, with_user),
            ("/classify", {"input": conversation.removeprefix(tokenizer.bos_token or ""), "user": user,
                           "use_activation": False}, with_user),
            ("/predict", {"inputs": [prompt[-1]["content"], response], "raw_scores": True}, without)]
    return goods


def bad_request(kind: str, goods: list, rng) -> tuple:
    """(path, raw body) of a request of bad `kind`."""
    path, body, _ = goods[rng.randrange(len(goods))]
    if kind == "malformed_json":
        return path, json.dumps(body)[:-1]
    if kind == "wrong_type":
        return "/v1/rewards", json.dumps({"items": [{"prompt": 5, "response": ["not", "text"]}]})
    if kind == "unknown_user":
        return "/v1/rewards", json.dumps({"items": [{"prompt": "hello", "response": "hi", "user": "nobody"}]})
    if kind == "oversize_body":
        return "/v1/rewards", json.dumps({"items": [{"prompt": "a" * int(FAULT_MAX_BODY_MB * 2**20), "response": "b"}]})
    return "/v1/rewards", json.dumps({"items": [{"prompt": "hello", "response": "hi"}] * (FAULT_MAX_ITEMS + 1)})


def started_server(checkpoint: Path, folder: Path) -> tuple:
    """`smoe serve` over `checkpoint` and `folder/routers` in a process of its own, logging to
    `folder/server.log`, once it answers: (process, URL)."""
    import requests

    port = free_port()
    with open(folder / "server.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hf_smoe.cli", "serve", str(checkpoint), "--routers", str(folder / "routers"),
             "--port", str(port), "--user-from", "labels", "--max-body-mb", str(FAULT_MAX_BODY_MB),
             "--max-items", str(FAULT_MAX_ITEMS)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"smoe serve exited with status {process.returncode}: see "
                               f"{(folder / 'server.log').read_text()[-2000:]}")
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{url}/health", timeout=5).ok:
                return process, url
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("smoe serve did not answer within 10 minutes")


def stopped(process) -> int:
    """SIGTERM, then the exit status (killed after a minute of draining)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def fault_load(url: str, goods: list, clients: int, seconds: float, seed: int) -> list:
    """`clients` threads sending the seeded mix until `seconds` are up: one (kind, status or None for a client
    that left or a connection that failed, seconds, reward error or None) per request."""
    import requests

    deadline = time.monotonic() + seconds

    def client(index):
        rng, outcomes = random.Random(seed * 1000 + index), []
        with requests.Session() as session:
            while time.monotonic() < deadline:
                kind = rng.choices(list(FAULT_MIX), weights=FAULT_MIX.values())[0]
                outcomes.append(one_request(session, url, kind, goods, rng))
        return outcomes

    with ThreadPoolExecutor(clients) as pool:
        return [outcome for outcomes in pool.map(client, range(clients)) for outcome in outcomes]


def one_request(session, url: str, kind: str, goods: list, rng) -> tuple:
    """One request of `kind` through `session`: (kind, status, seconds, |reward - smoe_reward's| of a good one)."""
    if kind == "disconnect":
        leave_mid_request(url, rng)
        return kind, None, 0.0, None
    if kind == "good":
        path, body, expected = goods[rng.randrange(len(goods))]
        data = json.dumps(body)
    else:
        (path, data), expected = bad_request(kind, goods, rng), None
    start = time.perf_counter()
    try:
        answer = session.post(url + path, data=data, headers={"Content-Type": "application/json"}, timeout=600)
    except OSError:  # requests' connection errors are OSErrors
        return kind, None, time.perf_counter() - start, None
    seconds = time.perf_counter() - start
    error = abs(served_reward(path, answer.json()) - expected) if kind == "good" and answer.ok else None
    return kind, answer.status_code, seconds, error


def served_reward(path: str, body) -> float:
    """The one reward of a one-sample answer, in each protocol's shape."""
    if path in ("/v1/rewards", "/get_reward"):
        return body["rewards"][0]
    return body["data"][0]["probs"][0] if path == "/classify" else body[0]["score"]


def leave_mid_request(url: str, rng) -> None:
    """A client that sends its headers and half its body, or its whole request, and leaves without the answer."""
    body = json.dumps({"items": [{"prompt": "hello", "response": "hi"}]}).encode()
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /v1/rewards HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head + (body[:len(body) // 2] if rng.random() < 0.5 else body))


def fault_summary(outcomes: list, clients: int, seconds: float, crashed: bool, checked: float, exit_status: int,
                  log: str) -> dict:
    """Counts by kind and status, the good requests' latency and reward errors, and the verdict."""
    by_kind = {}
    for kind, status, _, _ in outcomes:
        record = by_kind.setdefault(kind, {"requests": 0, "statuses": {}})
        record["requests"] += 1
        key = "left" if kind == "disconnect" else str(status or "no answer")
        record["statuses"][key] = record["statuses"].get(key, 0) + 1
    good = [(seconds_, error) for kind, status, seconds_, error in outcomes if kind == "good" and status == 200]
    errors = [error for _, error in good]
    results = {
        "clients": clients, "seconds": seconds, "requests": len(outcomes),
        "answered": sum(status is not None for _, status, _, _ in outcomes),
        "requests_per_s": len(outcomes) / seconds, "by_kind": by_kind,
        "good_served": len(good), "good_p50_s": percentile([s for s, _ in good], 50) if good else None,
        "good_p99_s": percentile([s for s, _ in good], 99) if good else None,
        "wrong_rewards": sum(error > REWARD_TOLERANCE for error in errors),
        "max_reward_error": max(errors, default=None),
        "client_errors_5xx": sum(kind in FAULT_STATUS and status is not None and status >= 500
                                 for kind, status, _, _ in outcomes),
        "bad_answered_otherwise": sum(kind in FAULT_STATUS and status != FAULT_STATUS[kind]
                                      for kind, status, _, _ in outcomes),
        "good_not_served": sum(kind == "good" and status != 200 for kind, status, _, _ in outcomes),
        "crashes": int(crashed), "checked": checked, "exit_status": exit_status,
        "server_tracebacks": log.count("Traceback")}
    results["passed"] = (results["wrong_rewards"] == results["crashes"] == results["client_errors_5xx"] == 0
                         and results["bad_answered_otherwise"] == results["good_not_served"] == 0
                         and checked < REWARD_TOLERANCE and exit_status == 0)
    return results
