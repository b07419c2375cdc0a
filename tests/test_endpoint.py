"""`EndpointGenerator` against a real `transformers serve` on 127.0.0.1 serving a tiny random Llama folder (answers
checked against plain transformers on the same folder), and against a scripted stand-in server for the bookkeeping
(retries, concurrency, log-probabilities, which transformers serve does not return)."""

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import torch
from huggingface_hub import InferenceClient, constants
from huggingface_hub.errors import OfflineModeIsEnabled
from loopback import LoopbackServer, QuietHandler, free_port
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_smoe.errors import EndpointError
from hf_smoe.interpret.generators.endpoint import JUDGE_TOKENS, TOP_LOGPROBS, EndpointGenerator
from hf_smoe.interpret.generators.base import parse_yes_no, yes_probability
from hf_smoe.testing import save_tiny_causal_lm

PROMPTS = ["hello how are you today ?", "please code a short poem", "what is a cat ?", "why is the sun good ?",
           "thanks", "is it a dog or a cat ?"]
# With this seed and initializer_range, the tiny model's first answer word is YES for some and not for others.
JUDGE_PROMPTS = ["is it a user ?", "is it a today ?", "is it a of ?", "is it a the ?"]


def tiny_folders(root):
    """A tiny causal LM (YES/NO in its vocabulary) and the same model without an LM head, each with a tokenizer."""
    return {"lm": save_tiny_causal_lm(root / "tiny-lm"), "base": save_tiny_causal_lm(root / "tiny-base", lm_head=False)}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`transformers serve` on a free loopback port, loading models on demand by folder path, offline."""
    for module in ("fastapi", "uvicorn", "openai"):
        pytest.importorskip(module, reason="transformers serve needs `pip install transformers[serving]`")
    root = tmp_path_factory.mktemp("served")
    folders, port = tiny_folders(root), free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--model-timeout", "3600"]
    log_path = root / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"url": url, **folders}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def local(served):
    """The served causal LM run locally with plain transformers: the reference answers."""
    return AutoTokenizer.from_pretrained(served["lm"]), AutoModelForCausalLM.from_pretrained(served["lm"]).eval()


def chat_inputs(tokenizer, prompt):
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)


def local_greedy(local, prompt, max_new_tokens):
    tokenizer, model = local
    inputs = chat_inputs(tokenizer, prompt)
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def local_yes_probability(local, prompt):
    """P(YES) pooled over the top log-probabilities of the first answer token, as a server that returns them would."""
    tokenizer, model = local
    with torch.no_grad():
        log_probs = model(**chat_inputs(tokenizer, prompt)).logits[0, -1].log_softmax(-1)
    top = log_probs.topk(TOP_LOGPROBS)
    return yes_probability({tokenizer.decode([i]): float(v) for v, i in zip(top.values, top.indices.tolist())})


@pytest.mark.slow
def test_generate_matches_local_greedy_in_order(served, local):
    with EndpointGenerator(served["url"], model=served["lm"], max_concurrency=3) as generator:
        answers = generator.generate(PROMPTS, max_new_tokens=8)
    expected = [local_greedy(local, prompt, 8) for prompt in PROMPTS]
    assert len(set(expected)) > 1  # the prompts are told apart, so the order is checked too
    assert answers == expected


@pytest.mark.slow
def test_judge_matches_local_model(served, local):
    with EndpointGenerator(served["url"], model=served["lm"], max_concurrency=2) as generator:
        judgments = generator.judge(JUDGE_PROMPTS)
    texts = [local_greedy(local, prompt, JUDGE_TOKENS) for prompt in JUDGE_PROMPTS]
    assert {parse_yes_no(text) for text in texts} == {True, False}  # both answers occur
    assert [judgment.raw for judgment in judgments] == texts
    for judgment, prompt, text in zip(judgments, JUDGE_PROMPTS, texts, strict=True):
        if judgment.probability is None:  # transformers serve 5.24 ignores `logprobs`
            assert judgment.answer == parse_yes_no(text)
        else:
            assert judgment.probability == pytest.approx(local_yes_probability(local, prompt), abs=1e-4)
            assert judgment.answer == (judgment.probability > 0.5)


@pytest.mark.slow
def test_base_model_fails_once_with_a_clear_error(served, monkeypatch):
    """A folder without an LM head makes transformers serve answer a bare 500: one request, one clear error."""
    generator = EndpointGenerator(served["url"], model=served["base"], max_retries=3, backoff=1)
    posts = []
    post = generator._client._inner_post
    monkeypatch.setattr(generator._client, "_inner_post", lambda *a, **k: posts.append(1) or post(*a, **k))
    with pytest.raises(EndpointError, match="HTTP 500") as raised:
        generator.generate(["hello"], max_new_tokens=4)
    assert raised.value.status == 500 and served["base"] in str(raised.value) and served["url"] in str(raised.value)
    assert len(posts) == 1


@pytest.mark.slow
def test_offline_mode_is_bypassed_only_by_the_endpoint_client(served, local, monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import, into this constant: set both as CI does.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with EndpointGenerator(served["url"], model=served["lm"]) as generator:
        assert generator.generate(["hello"], max_new_tokens=4) == [local_greedy(local, "hello", 4)]
    with pytest.raises(OfflineModeIsEnabled):
        InferenceClient(base_url=served["url"]).chat_completion([{"role": "user", "content": "hello"}],
                                                                 model=served["lm"], max_tokens=4)


class ScriptedServer(LoopbackServer):
    """A stand-in OpenAI chat server on a loopback port: `respond(request_body)` gives (status, body, headers);
    every request body is recorded, and so is the most requests in flight at once."""

    def __init__(self, respond, delay: float = 0.0):
        self.requests, self.headers, self.in_flight, self.most_in_flight = [], [], 0, 0
        lock, outer = threading.Lock(), self

        class Handler(QuietHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with lock:
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                    outer.in_flight += 1
                    outer.most_in_flight = max(outer.most_in_flight, outer.in_flight)
                time.sleep(delay)
                status, payload, headers = respond(body)
                with lock:
                    outer.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)


@pytest.fixture
def scripted():
    servers = []

    def start(respond, delay=0.0):
        servers.append(ScriptedServer(respond, delay))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def completion(content, top_logprobs=None):
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
    if top_logprobs is not None:
        first = max(top_logprobs.items(), key=lambda item: item[1])
        choice["logprobs"] = {"content": [{"token": first[0], "logprob": first[1], "top_logprobs": [
            {"token": token, "logprob": value} for token, value in top_logprobs.items()]}]}
    return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}, {}


def scripted_responses(*responses):
    remaining = list(responses)
    return lambda body: remaining.pop(0)


def test_transient_error_is_retried_once(scripted):
    server = scripted(scripted_responses((503, {"error": "busy"}, {"retry-after": "0"}), completion("sure")))
    start = time.monotonic()
    assert EndpointGenerator(server.url, model="m", backoff=30).generate(["hi"]) == ["sure"]
    assert len(server.requests) == 2 and time.monotonic() - start < 10  # Retry-After: 0 wins over the backoff
    body = server.requests[0]
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["model"] == "m"
    assert body["temperature"] == 0 and body["max_tokens"] == 64 and "logprobs" not in body


def test_retries_are_bounded_and_permanent_errors_fail_fast(scripted):
    busy = scripted(lambda body: (503, {"error": "busy"}, {}))
    with pytest.raises(EndpointError, match="3 tries.*HTTP 503: busy") as raised:
        EndpointGenerator(busy.url, model="m", max_retries=2, backoff=0.01).generate(["hi"])
    assert len(busy.requests) == 3 and raised.value.status == 503
    missing = scripted(lambda body: (404, {"error": {"message": "The model `m` does not exist."}}, {}))
    with pytest.raises(EndpointError, match=r"model 'm'.*HTTP 404: The model `m` does not exist\.") as raised:
        EndpointGenerator(missing.url, model="m", backoff=0.01).generate(["hi", "there"], max_new_tokens=3)
    assert raised.value.status == 404 and len(missing.requests) <= 2  # one per prompt at most: no retry


def test_unreachable_server_is_retried_then_named():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EndpointError, match=f"{url}.*2 tries.*ConnectError") as raised:
        EndpointGenerator(url, model="m", max_retries=1, backoff=0.01).generate(["hi"])
    assert raised.value.status is None


def test_bounded_concurrency_keeps_order(scripted):
    server = scripted(lambda body: completion(body["messages"][0]["content"].upper()), delay=0.05)
    prompts = [f"prompt {i}" for i in range(20)]
    assert EndpointGenerator(server.url, model="m", max_concurrency=4).generate(prompts) == [
        prompt.upper() for prompt in prompts]
    assert 2 <= server.most_in_flight <= 4


def test_judge_probability_pools_answer_forms_from_logprobs(scripted):
    tops = {"is it?": {"Yes": math.log(0.3), " YES": math.log(0.1), "maybe": math.log(0.2), "No": math.log(0.1)},
            "is it not?": {"Yes": math.log(0.3), "no": math.log(0.25), " No": math.log(0.25), "NO": math.log(0.1)},
            "what?": {"maybe": math.log(0.9), "perhaps": math.log(0.05)}}
    texts = {"is it?": "Yes", "is it not?": "Yes", "what?": "YES sure"}
    server = scripted(lambda body: completion(texts[body["messages"][0]["content"]],
                                              tops[body["messages"][0]["content"]]))
    judgments = EndpointGenerator(server.url, model="m").judge(list(tops))
    assert [j.probability for j in judgments] == pytest.approx([0.8, 0.3 / 0.9, None])
    assert [j.answer for j in judgments] == [True, False, True]  # the probability decides; without one, the text
    assert [j.raw for j in judgments] == ["Yes", "Yes", "YES sure"]
    assert all(body["logprobs"] is True and body["top_logprobs"] == TOP_LOGPROBS and
               body["max_tokens"] == JUDGE_TOKENS for body in server.requests)


def test_judge_falls_back_to_text_when_logprobs_are_rejected(scripted):
    server = scripted(lambda body: (422, {"detail": "logprobs: unsupported"}, {}) if "logprobs" in body
                      else completion("YES" if "cat" in body["messages"][0]["content"] else "no way"))
    judgments = EndpointGenerator(server.url, model="m", max_concurrency=1).judge(["a cat?", "a dog?"])
    assert [(j.answer, j.probability, j.raw) for j in judgments] == [(True, None, "YES"), (False, None, "no way")]
    assert ["logprobs" in body for body in server.requests] == [True, False, False]  # remembered


def test_only_the_given_api_key_is_sent(scripted, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_local_login")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = scripted(lambda body: completion("ok"))
    EndpointGenerator(server.url, model="m").generate(["hi"])
    EndpointGenerator(server.url, model="m", api_key="sk-given").generate(["hi"])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    EndpointGenerator(server.url, model="m").generate(["hi"])
    sent = [{key.lower(): value for key, value in headers.items()}.get("authorization") for headers in server.headers]
    assert sent == [None, "Bearer sk-given", "Bearer sk-env"]
