"""The reward server, started for real (uvicorn on 127.0.0.1, a free port) over a tiny checkpoint and two users'
routers, and called the way each real client calls it: OpenRLHF's remote reward model (requests, batched, and
aiohttp, one sample a request), verl's /classify payload, huggingface_hub's InferenceClient.text_classification and
the native API. Every reward must equal `smoe_reward` on the same sample, scored alone, to 1e-5."""

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

from hf_smoe import SMoERewardModel
from hf_smoe.data import load_pairs
from hf_smoe.features import training_encoding
from hf_smoe.features.encoding import render_text
from hf_smoe.modeling.modeling_smoe import SMoERouter
from hf_smoe.personalization import adapt_checkpoint
from hf_smoe.personalization.routers import save_router
from hf_smoe.rewards import smoe_reward
from hf_smoe.serve import RewardService, create_app, free_port, serving_in_background
from hf_smoe.testing import word_tokenizer
from hf_smoe.training.job import save_checkpoint

uvicorn = pytest.importorskip("uvicorn")
USERS = ("alice", "bob")
KEY = "test-key"
DSP = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsp" / "domain_specific_preference.test.json"


@pytest.fixture(scope="module")
def world(tmp_path_factory, backbone_dirs):
    """A tiny checkpoint trained at max_length 64 (recorded), a routers folder with alice and bob, and the reference
    reward function over the same files."""
    root = tmp_path_factory.mktemp("serve")
    tokenizer = word_tokenizer("chatml")
    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(backbone_dirs["llama"], num_experts=3, tokenizer=tokenizer)
    save_checkpoint(model, tokenizer, root / "checkpoint", training_encoding(64))
    (root / "routers").mkdir()
    for seed, user in enumerate(USERS):
        torch.manual_seed(10 + seed)
        save_router(SMoERouter(model.config), root / "routers" / f"{user}.safetensors", model)
    reference = smoe_reward(root / "checkpoint", routers={user: root / "routers" / f"{user}.safetensors"
                                                          for user in USERS})
    return {"root": root, "tokenizer": tokenizer, "reference": reference}


@pytest.fixture(scope="module")
def server(world):
    service = RewardService(world["root"] / "checkpoint", world["root"] / "routers")
    app = create_app(service, api_key=KEY, user_from="labels", max_items=16, max_body_bytes=512 * 1024)
    with serving_in_background(app) as url:
        yield {"url": url, "service": service, "coalescer": app.state.coalescer}


SAMPLES = [  # (prompt, response, user)
    ("hello how are you today", "good thanks", "alice"),
    ([{"role": "user", "content": "what is a cat ?"}], "a kind dog", None),
    ("what is a dog", "a kind cat , good", "bob"),
    ([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
      {"role": "user", "content": "how are you ?"}], "fine", "alice"),
    ("tell me about cats", "", None),  # a policy's empty completion
]


def alone(world, prompt, response, user) -> float:
    """The reference: `smoe_reward` on this one sample."""
    return world["reference"](prompts=[prompt], completions=[response], user=[user])[0]


def messages_of(prompt) -> list:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def rendered_prompt(world, prompt) -> str:
    return render_text(world["tokenizer"], messages_of(prompt), add_generation_prompt=True)


def rendered_conversation(world, prompt, response) -> str:
    return render_text(world["tokenizer"], messages_of(prompt) + [{"role": "assistant", "content": response}],
                       add_generation_prompt=False)


def test_native_rewards_match_smoe_reward_and_explain_them(world, server):
    items = [{"prompt": p, "response": r, "user": u} for p, r, u in SAMPLES]
    answer = requests.post(f"{server['url']}/v1/rewards", json={"items": items, "explain": True}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = [alone(world, *sample) for sample in SAMPLES]
    assert body["rewards"] == pytest.approx(expected, abs=1e-5)
    for item, reward, sample in zip(body["items"], expected, SAMPLES):
        routing, experts = item["routing_weights"], item["expert_rewards"]
        assert item["user"] == sample[2] and sum(routing) == pytest.approx(1, abs=1e-6)
        assert sum(w * r for w, r in zip(routing, experts)) == pytest.approx(reward, abs=1e-5)  # Eq. 2
        weights = [expert["weight"] for expert in item["top_experts"]]
        assert weights == sorted(routing, reverse=True)[:3]
    assert body["rewards"][0] != pytest.approx(
        world["reference"](prompts=[SAMPLES[0][0]], completions=[SAMPLES[0][1]])[0], abs=1e-6), \
        "alice's router must change her reward"


def test_a_heads_only_checkpoint_serves_the_same_rewards(world, backbone_dirs, tmp_path):
    """A heads-only checkpoint (the head, and where its backbone lives) loads its backbone and serves what the full
    checkpoint serves."""
    from hf_smoe.runtime import load_checkpoint

    model, tokenizer = load_checkpoint(world["root"] / "checkpoint")
    save_checkpoint(model, tokenizer, tmp_path / "heads", training_encoding(64), heads_only=True,
                    backbone_source=str(backbone_dirs["llama"]))
    assert (tmp_path / "heads" / "model.safetensors").stat().st_size < 20_000
    service = RewardService(tmp_path / "heads", world["root"] / "routers")
    items = [{"prompt": p, "response": r, "user": u} for p, r, u in SAMPLES]
    with serving_in_background(create_app(service)) as url:
        served = requests.post(f"{url}/v1/rewards", json={"items": items}, timeout=60).json()["rewards"]
    assert served == pytest.approx([alone(world, *sample) for sample in SAMPLES], abs=1e-5)


def test_openrlhf_batched_client_gets_each_users_rewards(world, server):
    """The request OpenRLHF's `remote_rm_fn` posts with `requests` (a batch with prompts and labels; labels name
    the users under --user-from labels), and its older query-only one."""
    queries = [rendered_prompt(world, p) + r + world["tokenizer"].eos_token for p, r, _ in SAMPLES]
    prompts = [rendered_prompt(world, p) for p, _, _ in SAMPLES]
    labels = [u or "" for _, _, u in SAMPLES]
    expected = [alone(world, *sample) for sample in SAMPLES]
    answer = requests.post(f"{server['url']}/get_reward", json={"query": queries, "prompts": prompts,
                                                                "labels": labels},
                           headers={"Content-Type": "application/json"}, timeout=180).json()
    assert answer["rewards"] == pytest.approx(expected, abs=1e-5) and answer["scores"] == answer["rewards"]
    assert answer["extra_logs"] == {}
    query_only = requests.post(f"{server['url']}/get_reward", json={"query": queries}, timeout=180).json()
    assert query_only["rewards"] == pytest.approx([alone(world, p, r, None) for p, r, _ in SAMPLES], abs=1e-5)
    empty = requests.post(f"{server['url']}/get_reward", json={"query": [], "prompts": [], "labels": []}).json()
    assert empty == {"rewards": [], "scores": [], "extra_logs": {}}  # what sharding sends the extra servers


def test_openrlhf_one_sample_a_request_with_aiohttp(world, server):
    """OpenRLHF's agent executor: aiohttp, one `{"query": [q], "prompts": [p], "labels": [l]}` per sample, all at
    once."""
    import aiohttp

    async def fetch_all():
        async with aiohttp.ClientSession() as session:
            async def one(prompt, response, user):
                payload = {"query": [rendered_prompt(world, prompt) + response + world["tokenizer"].eos_token],
                           "prompts": [rendered_prompt(world, prompt)], "labels": [user or ""]}
                async with session.post(f"{server['url']}/get_reward", json=payload) as response_:
                    response_.raise_for_status()
                    return await response_.json()
            return await asyncio.gather(*(one(*sample) for sample in SAMPLES * 4))

    answers = asyncio.run(fetch_all())
    assert [a["rewards"][0] for a in answers] == pytest.approx([alone(world, *s) for s in SAMPLES * 4], abs=1e-5)


def test_verl_classify_and_pooling(world, server):
    """verl's payload: the reward model's chat template over prompt + response, BOS cut off, activation off;
    the reward is `data[-1]["probs"][-1]`."""
    bos = world["tokenizer"].bos_token
    for prompt, response, user in SAMPLES[:4]:
        text = rendered_conversation(world, prompt, response)
        text = text[len(bos):] if bos and text.startswith(bos) else text
        payload = {"model": "/models/rm", "input": text, "use_activation": False, "user": user}
        output = requests.post(f"{server['url']}/classify", json=payload, timeout=60).json()
        expected = alone(world, prompt, response, user)
        assert output["data"][-1]["probs"][-1] == pytest.approx(expected, abs=1e-5)
        assert output["model"] == "/models/rm" and output["object"] == "list" and output["usage"]["prompt_tokens"] > 0
        older = requests.post(f"{server['url']}/classify", json={**payload, "activation": False,
                                                                  "use_activation": None}).json()
        assert older["data"][0]["probs"][0] == pytest.approx(expected, abs=1e-5)
        default = requests.post(f"{server['url']}/classify", json={"input": text, "user": user}).json()
        assert default["data"][0]["probs"][0] == pytest.approx(1 / (1 + math.exp(-expected)), abs=1e-6)
        chat = requests.post(f"{server['url']}/pooling", json={
            "task": "classify", "messages": messages_of(prompt) + [{"role": "assistant", "content": response}],
            "use_activation": False, "user": user}).json()
        assert chat["data"][0]["object"] == "pooling" and chat["data"][0]["data"][0] == pytest.approx(expected,
                                                                                                     abs=1e-5)


def test_huggingface_hub_text_classification(world, server, monkeypatch):
    """`InferenceClient(base_url).text_classification` posts to the base URL itself; TEI's /predict takes the same
    body and [prompt, response] pairs."""
    from huggingface_hub import InferenceClient, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite's guard against the real Hub

    prompt, response, _ = SAMPLES[0]
    expected = alone(world, prompt, response, None)
    client = InferenceClient(base_url=server["url"])
    raw = client.text_classification(rendered_conversation(world, prompt, response), function_to_apply="none")
    assert raw[0].label == "reward" and raw[0].score == pytest.approx(expected, abs=1e-5)
    squashed = client.text_classification(rendered_conversation(world, prompt, response))
    assert squashed[0].score == pytest.approx(1 / (1 + math.exp(-expected)), abs=1e-6)
    tei = requests.post(f"{server['url']}/predict", json={"inputs": [prompt, response], "raw_scores": True}).json()
    assert tei == [{"label": "reward", "score": pytest.approx(expected, abs=1e-5)}]  # TEI: one input, flat
    batch = requests.post(f"{server['url']}/predict", json={"inputs": [[prompt, response], [
        rendered_conversation(world, *SAMPLES[2][:2])]], "raw_scores": True}).json()
    assert [row[0]["score"] for row in batch] == pytest.approx(
        [expected, alone(world, *SAMPLES[2][:2], None)], abs=1e-5)


def test_32_concurrent_clients_get_their_own_rewards_in_order(world, server):
    """32 clients at once, each with its own mix of samples and users: every answer in its request's order, equal
    to scoring each sample alone, and the server coalesced them into fewer passes than requests."""
    requests_ = [[SAMPLES[(client + row) % len(SAMPLES)] for row in range(1 + client % 3)] for client in range(32)]
    before = server["coalescer"].batches

    def send(samples):
        items = [{"prompt": p, "response": r, "user": u} for p, r, u in samples]
        return requests.post(f"{server['url']}/v1/rewards", json={"items": items}, timeout=120).json()["rewards"]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(send, requests_))
    for samples, answer in zip(requests_, answers):
        assert answer == pytest.approx([alone(world, *sample) for sample in samples], abs=1e-5)
    assert server["coalescer"].batches - before < len(requests_)


def test_put_user_serves_the_router_smoe_adapt_writes(world, server, tmp_path):
    """PUT 50 DSP pairs as a new user: the next request as that user scores with the router `smoe adapt` writes
    from the same pairs, n and seed; DELETE removes the user and its file."""
    pairs = load_pairs(DSP, "dsp", max_pairs=50, seed=0)
    rows = pairs.to_list()
    (tmp_path / "carol.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    adapted = adapt_checkpoint(world["root"] / "checkpoint", tmp_path / "carol.jsonl",
                               output=tmp_path / "carol.safetensors", n=40, seed=3)
    headers = {"Authorization": f"Bearer {KEY}"}
    answer = requests.put(f"{server['url']}/v1/users/carol", json={"pairs": rows, "n": 40, "seed": 3},
                          headers=headers, timeout=300)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accuracy_after"] == pytest.approx(adapted["accuracy_after"])  # measured on the other 10
    assert (world["root"] / "routers" / "carol.safetensors").is_file()
    reference = smoe_reward(world["root"] / "checkpoint", routers={"carol": tmp_path / "carol.safetensors"})
    items = [{"prompt": row["prompt"], "response": row["chosen"], "user": "carol"} for row in rows[:4]]
    served = requests.post(f"{server['url']}/v1/rewards", json={"items": items}).json()["rewards"]
    expected = reference(prompts=[i["prompt"] for i in items], completions=[i["response"] for i in items],
                         user=["carol"] * 4)
    assert served == pytest.approx(expected, abs=1e-5)
    assert "carol" in requests.get(f"{server['url']}/v1/models").json()["data"][0]["users"]
    assert requests.delete(f"{server['url']}/v1/users/carol", headers=headers).status_code == 200
    assert not (world["root"] / "routers" / "carol.safetensors").exists()
    gone = requests.post(f"{server['url']}/v1/rewards", json={"items": items[:1]})
    assert gone.status_code == 404 and "carol" in gone.json()["error"]["message"]


def test_concurrent_puts_of_one_user_leave_one_whole_router(world, server):
    rows = load_pairs(DSP, "dsp", max_pairs=12, seed=1).to_list()
    headers = {"Authorization": f"Bearer {KEY}"}

    def put(seed):
        return requests.put(f"{server['url']}/v1/users/dave", json={"pairs": rows, "seed": seed}, headers=headers,
                            timeout=300).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(put, range(4))) == [200] * 4
    service = RewardService(world["root"] / "checkpoint", world["root"] / "routers")  # the file loads whole
    assert "dave" in service.users
    requests.delete(f"{server['url']}/v1/users/dave", headers=headers)


BAD_REQUESTS = [  # (method, path, body, headers, status, field named in the message)
    ("post", "/v1/rewards", '{"items": [}', None, 400, "body"),
    ("post", "/v1/rewards", {}, None, 422, "items"),
    ("post", "/v1/rewards", {"items": []}, None, 422, "items"),
    ("post", "/v1/rewards", {"items": [{"prompt": "a", "response": 3}]}, None, 422, "items[0].response"),
    ("post", "/v1/rewards", {"items": [{"prompt": " ", "response": "b"}]}, None, 422, "items[0].prompt"),
    ("post", "/v1/rewards", {"items": [{"prompt": "a", "respnse": "b"}]}, None, 422, "items[0]"),
    ("post", "/v1/rewards", {"items": [{"prompt": "a", "response": "b", "user": "../x"}]}, None, 422,
     "items[0].user"),
    ("post", "/v1/rewards", {"items": [{"prompt": "a", "response": "b", "user": "zed"}]}, None, 404,
     "items[0].user"),
    ("post", "/v1/rewards", {"items": [{"prompt": "a", "response": "b"}], "explain": "maybe"}, None, 422,
     "explain"),
    ("post", "/v1/rewards", {"items": [{"prompt": "a", "response": "b"}] * 17}, None, 413, "items"),
    ("post", "/v1/rewards", {"items": [{"prompt": "a" * 600_000, "response": "b"}]}, None, 413, "body"),
    ("post", "/get_reward", {"query": ["a", "b"], "prompts": ["a"]}, None, 422, "prompts"),
    ("post", "/get_reward", {"query": "a"}, None, 422, "query"),
    ("post", "/get_reward", {"query": ["no turn here"]}, None, 422, "query[0]"),
    ("post", "/get_reward", {"query": ["x y"], "prompts": ["z"]}, None, 422, "query[0]"),
    ("post", "/get_reward", {"query": ["a"], "labels": ["nobody"]}, None, 404, "labels[0]"),
    ("post", "/classify", {"model": "m"}, None, 422, "input"),
    ("post", "/classify", {"input": ""}, None, 422, "input[0]"),
    ("post", "/classify", {"messages": [{"role": "user", "content": "hi"}]}, None, 422, "messages"),
    ("post", "/classify", {"input": "a", "user": "nobody"}, None, 404, "user"),
    ("post", "/pooling", {"input": "a", "task": "embed"}, None, 422, "task"),
    ("post", "/predict", {"inputs": ["a", "b", "c"]}, None, 422, "inputs[0]"),
    ("post", "/predict", {"inputs": 5}, None, 422, "inputs"),
    ("put", "/v1/users/erin", {"pairs": [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3}, None, 401,
     "Authorization"),
    ("put", "/v1/users/erin", {"pairs": [{"prompt": "a", "chosen": "b"}] * 3}, {"Authorization": f"Bearer {KEY}"},
     422, "pairs"),
    ("put", "/v1/users/.erin", {"pairs": [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3},
     {"Authorization": f"Bearer {KEY}"}, 422, "name"),
    ("put", "/v1/users/erin", {"pairs": [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3, "n": 9},
     {"Authorization": f"Bearer {KEY}"}, 422, "n"),
    ("delete", "/v1/users/nobody", None, {"Authorization": f"Bearer {KEY}"}, 404, "name"),
    ("get", "/v2/nothing", None, None, 404, "path"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: f"{case[0]} {case[1]} {case[4]} {case[5]}")
def test_bad_requests_are_refused_naming_the_field(server, case):
    method, path, body, headers, status, field = case
    data = body if isinstance(body, str) else None if body is None else json.dumps(body)
    answer = requests.request(method, server["url"] + path, data=data, timeout=60,
                              headers={"Content-Type": "application/json", **(headers or {})})
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]["message"]
    assert message.startswith(field), message
    assert requests.get(server["url"] + "/health").json()["status"] == "ok"  # still serving


def test_overload_answers_503_with_retry_after(world):
    """A queue over its bound refuses with 503 and Retry-After instead of growing."""
    service = RewardService(world["root"] / "checkpoint", world["root"] / "routers")
    app = create_app(service, max_wait_ms=400, max_batch_tokens=1, max_queue_tokens=1)
    with serving_in_background(app) as url, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: requests.post(f"{url}/v1/rewards", json={"items": [
            {"prompt": "hello", "response": "hi"}]}, timeout=60), range(8)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses[0] == 200 and 503 in statuses
    refused = next(answer for answer in answers if answer.status_code == 503)
    assert refused.headers["Retry-After"] == "1" and refused.json()["error"]["param"] == "server"


def test_smoe_serve_refuses_an_open_address_without_a_key(world):
    from catalogue import run_cli

    result = run_cli("serve", world["root"] / "checkpoint", "--host", "0.0.0.0")
    assert result.code == 2 and "--host: 0.0.0.0 is reachable" in result.stderr


def test_sigterm_drains_the_request_in_flight(world):
    """`smoe serve` under SIGTERM answers the request it holds (here: waiting 2 s for company) and then exits."""
    port = free_port()
    environment = {**os.environ, "HF_SMOE_DTYPE": "float32"}
    process = subprocess.Popen([sys.executable, "-m", "hf_smoe.cli", "serve", str(world["root"] / "checkpoint"),
                                "--port", str(port), "--max-wait-ms", "2000"], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requests.post, f"{url}/v1/rewards", json={"items": [
                {"prompt": SAMPLES[0][0], "response": SAMPLES[0][1]}]}, timeout=60)
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            answer = pending.result()
        assert answer.status_code == 200
        assert answer.json()["rewards"] == pytest.approx([alone(world, SAMPLES[0][0], SAMPLES[0][1], None)],
                                                         abs=1e-5)
        # uvicorn shuts down cleanly, then re-raises the signal so the exit status still says SIGTERM
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Finished server process" in process.stdout.read()
    finally:
        process.kill()
        process.wait()


def test_bench_serve_checks_every_mode_against_smoe_reward(backbone_dirs):
    """`smoe bench serve` on a tiny backbone: both modes measured for every setting, the served rewards equal
    `smoe_reward` in both, and the two ratios it reports are the ones its runs give."""
    from hf_smoe.bench import bench_serve

    results = bench_serve(backbone_dirs["llama"], inputs=(1, 4), concurrency=(1, 4), num_users=3, texts_per_run=8)
    assert results["checked"] < 1e-5 and results["checked_naive"] < 1e-5
    settings = {(r["coalesce"], r["inputs_per_request"], r["concurrency"], r["users"]) for r in results["runs"]}
    assert settings == {(c, i, n, 0) for c in (True, False) for i in (1, 4) for n in (1, 4)} | {
        (True, 1, 4, 1), (True, 1, 4, 3)}
    run = {(r["coalesce"], r["inputs_per_request"], r["concurrency"], r["users"]): r for r in results["runs"]}
    assert results["coalesced_vs_naive_requests_per_s_at_4"] == pytest.approx(
        run[True, 1, 4, 0]["requests_per_s"] / run[False, 1, 4, 0]["requests_per_s"])
    assert results["time_3_users_vs_1_user"] == pytest.approx(run[True, 1, 4, 3]["seconds"]
                                                              / run[True, 1, 4, 1]["seconds"])
    assert all(r["p50_s"] <= r["p99_s"] and r["requests"] >= r["concurrency"] for r in results["runs"])


def test_bf16_rewards_do_not_depend_on_batch_mates(world, backbone_dirs, tmp_path, monkeypatch):
    """In 16 bits SDPA's masked kernel rounds differently from its unmasked one; the scoring path computes attention
    eagerly there, so a row padded next to a longer one scores as it does alone."""
    from hf_smoe.runtime import load_checkpoint

    monkeypatch.delenv("HF_SMOE_DTYPE", raising=False)
    model, tokenizer = load_checkpoint(world["root"] / "checkpoint")
    save_checkpoint(model, tokenizer, tmp_path / "bf16", training_encoding(64, torch.bfloat16))
    reward = smoe_reward(model)
    assert next(reward.model.backbone.parameters()).dtype == torch.bfloat16
    assert model.backbone.config._attn_implementation == "sdpa"  # the caller's model is left as it was
    prompts, responses = [p for p, _, _ in SAMPLES], [r for _, r, _ in SAMPLES]
    together = reward(prompts=prompts, completions=responses)
    assert together == pytest.approx([reward(prompts=[p], completions=[r])[0] for p, r in zip(prompts, responses)],
                                     abs=1e-6)
