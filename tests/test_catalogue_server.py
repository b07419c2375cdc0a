"""The failure catalogue of the reward server: what every protocol's route does with malformed JSON, wrong types,
missing fields, empty lists, oversize bodies, too many or over-long texts, unknown and path-like users, keys,
methods and paths; and the server under faults: names that are paths, a corrupt PUT, a full disk, a user replaced
or removed while her requests are in flight, clients that leave mid-request or never finish, SIGTERM under load;
plus `smoe bench serve --faults`.

Every row talks to a real server (uvicorn on 127.0.0.1) over a tiny checkpoint (`world()`). A refusal is a 4xx whose
JSON body names the field (`refusal` turns it into the `InputError` the `error` verdict reads, prefixed with the
status); a served reward equals `smoe_reward` on the same sample scored alone, to 1e-5.
"""

import atexit
import contextlib
import errno
import functools
import hashlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import pytest
import torch
from catalogue import Case, check_case, parametrize

from hf_smoe import SMoERewardModel
from hf_smoe.data.synthetic import generate_preference_set
from hf_smoe.errors import InputError
from hf_smoe.features import training_encoding
from hf_smoe.features.encoding import render_text
from hf_smoe.modeling.modeling_smoe import SMoERouter
from hf_smoe.personalization.routers import save_router
from hf_smoe.rewards import smoe_reward
from hf_smoe.serve import RewardService, create_app, free_port, serving_in_background
from hf_smoe.testing import save_tiny_backbone, word_tokenizer
from hf_smoe.training.job import save_checkpoint

KEY = "catalogue-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 256 * 1024
MAX_ITEMS = 16
TOKENIZER = word_tokenizer("chatml")
LONG = " ".join(["please tell me a long story of the sun and the rain , why ?"] * 30)  # ~400 tokens, cut to 64
SAMPLES = [  # (prompt, response, user)
    ("hello how are you today", "good thanks", "alice"),
    ("what is a dog", "a kind cat , good", "bob"),
    ([{"role": "user", "content": "what is a cat ?"}], "a kind dog", None),
]


@functools.cache
def world() -> dict:
    """A tiny checkpoint trained at max_length 64, a routers folder with alice and bob, labelled pairs to PUT, and
    `smoe_reward` over the same files (the reference every served reward is held to)."""
    root = Path(tempfile.mkdtemp(prefix="smoe-catalogue-server-"))
    backbone = save_tiny_backbone(root / "backbone", "llama")
    torch.manual_seed(0)
    model = SMoERewardModel.from_backbone(backbone, num_experts=3, tokenizer=TOKENIZER)
    save_checkpoint(model, TOKENIZER, root / "checkpoint", training_encoding(64))
    for seed, user in enumerate(("alice", "bob")):
        torch.manual_seed(10 + seed)
        save_router(SMoERouter(model.config), root / "routers" / f"{user}.safetensors", model)
    return {"root": root, "backbone": backbone, "checkpoint": root / "checkpoint", "routers": root / "routers",
            "reference": reference_of(root / "checkpoint", root / "routers"),
            "pairs": generate_preference_set(12, seed=3).to_list()}


def reference_of(checkpoint, routers: Path):
    return smoe_reward(checkpoint, routers={path.stem: path for path in routers.glob("*.safetensors")})


def alone(prompt, response, user=None, *, reference=None) -> float:
    """The reference: `smoe_reward` on this one sample."""
    return (reference or world()["reference"])(prompts=[prompt], completions=[response], user=[user])[0]


def alone_each(samples, reference=None) -> dict:
    """`alone` of each distinct sample, by its repr (a row's many answers repeat a few samples)."""
    return {repr(sample): alone(*sample, reference=reference) for sample in samples}


def copy_routers(tmp_path) -> Path:
    return Path(shutil.copytree(world()["routers"], tmp_path / "routers"))


@contextlib.contextmanager
def own_server(routers, **options):
    """A server of its own (for rows that change users or overload it) over `routers`."""
    service = RewardService(world()["checkpoint"], routers)
    with serving_in_background(create_app(service, **{"api_key": KEY, **options})) as url:
        yield url


def shared_server(name: str = "shared") -> str:
    """`started_server(name)`, one server a name whether the name is given or not."""
    return started_server(name)


@functools.cache
def started_server(name: str) -> str:
    """The server most rows share, up for the rest of the session: `shared` (an API key, users from OpenRLHF's
    labels, 16 texts and 256 KiB a request at most) or `plain` (`smoe serve`'s defaults: no key, labels not users)."""
    routers = Path(shutil.copytree(world()["routers"], world()["root"] / f"routers-{name}"))
    service = RewardService(world()["checkpoint"], routers)
    options = {"api_key": KEY, "user_from": "labels", "max_items": MAX_ITEMS, "max_body_bytes": MAX_BODY}
    stack = contextlib.ExitStack()
    url = stack.enter_context(serving_in_background(create_app(service, **(options if name == "shared" else {}))))
    atexit.register(stack.close)
    return url


class Answer(NamedTuple):
    status: int
    text: str

    def json(self):
        return json.loads(self.text)


def send(method: str, path: str, body=None, headers=None, url: str | None = None) -> Answer:
    """One request exactly as given (no client-side normalisation of the path or the body): a dict or list goes
    as JSON, a str or bytes as is, an iterator of bytes chunked."""
    host, port = (url or shared_server()).removeprefix("http://").split(":")
    data = json.dumps(body) if isinstance(body, dict | list) else body
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        answer = connection.getresponse()
        return Answer(answer.status, answer.read().decode("utf-8", "replace"))
    finally:
        connection.close()


def refusal(answer: Answer) -> Answer:
    """A well-formed refusal (OpenAI's error shape, the message starting with the field it names, no traceback)
    raised as the `InputError` the `error` verdict reads, its status in front (so a row's message holds the status
    it expects: a 4xx for what the client got wrong); anything else is returned, for `check_case` to reject. A 500,
    the server's own failure, is never a refusal."""
    assert answer.status != 500 and "Traceback" not in answer.text, f"{answer.status}: {answer.text[:2000]}"
    if answer.status >= 400:
        error = answer.json()["error"]
        assert error["code"] == answer.status and error["message"].startswith(f"{error['param']}: "), error
        raise InputError(f"HTTP {answer.status} {error['message']}")
    return answer


def healthy(url: str) -> bool:
    return send("GET", "/health", url=url).json()["status"] == "ok"


def refused(name, status, field, method, path, body=None, headers=None, server="shared") -> Case:
    """A row: this request is refused with `status`, naming `field`."""
    return Case(name, "error", f"HTTP {status} {field}: ",
                lambda tmp_path: refusal(send(method, path, body, headers, shared_server(server))))


def served(name, path, body, read: Callable, samples: list, server="shared") -> Case:
    """A row: this request is answered, each score equal to `smoe_reward` on `samples` (prompt, response, user)
    scored alone."""
    def check(answer):
        assert answer.status == 200, answer.text
        assert read(answer.json()) == pytest.approx([alone(*sample) for sample in samples], abs=1e-5)
    return Case(name, "handled", "", lambda tmp_path: send("POST", path, body, url=shared_server(server)), check)


def rendered_prompt(prompt) -> str:
    return render_text(TOKENIZER, messages_of(prompt), add_generation_prompt=True)


def rendered_conversation(prompt, response) -> str:
    return render_text(TOKENIZER, messages_of(prompt) + [{"role": "assistant", "content": response}],
                       add_generation_prompt=False)


def messages_of(prompt) -> list:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def query_of(prompt, response) -> str:
    """What OpenRLHF sends as `query`: the rendered prompt, the response and EOS."""
    return rendered_prompt(prompt) + response + TOKENIZER.eos_token


def item(prompt="hello", response="hi", user=None) -> dict:
    return {"prompt": prompt, "response": response, **({} if user is None else {"user": user})}


def rewards_of(body):
    return body["rewards"]


def probs_of(body):
    return [row["probs"][0] for row in body["data"]]


def scores_of(body):
    return [row[0]["score"] for row in body]


PAIR = {"prompt": "a", "chosen": "b", "rejected": "c"}
SURROGATE = '"hello \\ud800 there"'  # valid JSON, but no Unicode text: an unpaired UTF-16 surrogate

MALFORMED = [
    refused("/get_reward: malformed JSON", 400, "body", "POST", "/get_reward", '{"query": ['),
    refused("/classify: truncated JSON", 400, "body", "POST", "/classify", '{"input": '),
    refused("/pooling: not JSON at all", 400, "body", "POST", "/pooling", "nope"),
    refused("/predict: malformed JSON", 400, "body", "POST", "/predict", '["a",'),
    refused("POST /: malformed JSON", 400, "body", "POST", "/", "{"),
    refused("PUT /v1/users: malformed JSON", 400, "body", "PUT", "/v1/users/zoe", '{"pairs": [', AUTH),
    refused("/v1/rewards: bytes that are not UTF-8", 400, "body", "POST", "/v1/rewards",
            b'{"items": [{"prompt": "\xff\xfe", "response": "b"}]}'),
    refused("/v1/rewards: JSON nested 5,000 deep", 400, "body", "POST", "/v1/rewards", "[" * 5000 + "]" * 5000),
    refused("/v1/rewards: an integer of 5,000 digits", 400, "body", "POST", "/v1/rewards",
            '{"items": [{"prompt": "a", "response": "b", "user": ' + "7" * 5000 + "}]}"),
    refused("/v1/rewards: an unpaired surrogate in a prompt", 422, "items[0].prompt", "POST", "/v1/rewards",
            '{"items": [{"prompt": ' + SURROGATE + ', "response": "b"}]}'),
    refused("/get_reward: an unpaired surrogate in a query", 422, "query[0]", "POST", "/get_reward",
            {"query": [query_of("hello", "yes \ud800 no")]}),
    refused("/pooling: an unpaired surrogate in a message", 422, "messages[0].content", "POST", "/pooling",
            '{"messages": [{"role": "user", "content": ' + SURROGATE + '}, {"role": "assistant", "content": "b"}]}'),
    refused("/v1/rewards: JSON sent as text/plain", 415, "Content-Type", "POST", "/v1/rewards",
            json.dumps({"items": [item()]}), {"Content-Type": "text/plain"}),
    refused("/v1/rewards: an empty body", 422, "body", "POST", "/v1/rewards", ""),
]

WRONG_TYPES = [
    refused("/get_reward: numbers for queries", 422, "query[0]", "POST", "/get_reward", {"query": [1, 2]}),
    refused("/get_reward: query null", 422, "query", "POST", "/get_reward", {"query": None}),
    refused("/classify: a number for input", 422, "input", "POST", "/classify", {"input": 5}),
    refused("/classify: nested lists for input", 422, "input[0]", "POST", "/classify", {"input": [["a b"]]}),
    refused("/classify: a number for user", 422, "user", "POST", "/classify", {"input": "a", "user": 5}),
    refused("/classify: a word for use_activation", 422, "use_activation", "POST", "/classify",
            {"input": "a", "use_activation": "sure"}),
    refused("/pooling: a number for a message's content", 422, "messages[0].content", "POST", "/pooling",
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]}),
    refused("/predict: inputs null", 422, "inputs", "POST", "/predict", {"inputs": None}),
    refused("/predict: numbers in a pair", 422, "inputs[0][0]", "POST", "/predict", {"inputs": [[1, 2]]}),
    refused("/v1/rewards: prompt null", 422, "items[0].prompt", "POST", "/v1/rewards",
            {"items": [item(prompt=None)]}),
    refused("/v1/rewards: a message without content", 422, "items[0].prompt[0].content", "POST", "/v1/rewards",
            {"items": [item(prompt=[{"role": "user"}])]}),
    refused("/v1/rewards: the body is a list", 422, "body", "POST", "/v1/rewards", [item()]),
    refused("PUT: numbers for texts", 422, "pairs", "PUT", "/v1/users/zoe",
            {"pairs": [{"prompt": 1, "chosen": 2, "rejected": 3}] * 3}, AUTH),
    refused("PUT: a text in one record and a number in the next", 422, "pairs", "PUT", "/v1/users/zoe",
            {"pairs": [PAIR, {**PAIR, "prompt": 1}]}, AUTH),
    refused("PUT: a word for the seed", 422, "seed", "PUT", "/v1/users/zoe", {"pairs": [PAIR] * 3, "seed": "x"},
            AUTH),
]

def check_empty_answer(answer):
    """vLLM's envelope around no scores, as `/get_reward` answers an empty batch (what OpenRLHF's sharding sends)."""
    assert answer.status == 200, answer.text
    assert answer.json()["data"] == [] and answer.json()["usage"]["prompt_tokens"] == 0, answer.text


MISSING_AND_EMPTY = [
    refused("/get_reward: no query", 422, "query", "POST", "/get_reward", {"prompts": ["a"]}),
    refused("/predict: no inputs", 422, "inputs", "POST", "/predict", {"raw_scores": True}),
    refused("/pooling: neither input nor messages", 422, "input", "POST", "/pooling", {"task": "classify"}),
    refused("PUT: no pairs", 422, "pairs", "PUT", "/v1/users/zoe", {"n": 2}, AUTH),
    refused("/predict: an empty list", 422, "inputs", "POST", "/predict", {"inputs": []}),
    refused("POST /: an empty pair", 422, "inputs[0]", "POST", "/", {"inputs": [[]]}),
    refused("/pooling: no messages", 422, "messages", "POST", "/pooling", {"messages": []}),
    refused("/v1/rewards: a prompt of no messages", 422, "items[0].prompt", "POST", "/v1/rewards",
            {"items": [item(prompt=[])]}),
    refused("PUT: no pairs in the list", 422, "pairs", "PUT", "/v1/users/zoe", {"pairs": []}, AUTH),
    Case("/classify: an empty input list is an empty answer", "handled", "",
         lambda tmp_path: send("POST", "/classify", {"input": []}), check_empty_answer),
]


def chunked(size: int):
    """A body of `size` bytes sent in 8 KiB chunks with no Content-Length (what a streaming client sends)."""
    return (b"x" * min(8192, size - start) for start in range(0, size, 8192))


SIZES = [
    refused("/get_reward: a body over --max-body-mb", 413, "body", "POST", "/get_reward",
            {"query": ["a" * (MAX_BODY + 1)]}),
    refused("/classify: a chunked body over --max-body-mb", 413, "body", "POST", "/classify", chunked(MAX_BODY + 10)),
    refused("PUT: a body over --max-body-mb", 413, "body", "PUT", "/v1/users/zoe",
            {"pairs": [{**PAIR, "chosen": "b" * MAX_BODY}] * 2}, AUTH),
    refused("/get_reward: too many queries", 413, "query", "POST", "/get_reward", {"query": ["a"] * (MAX_ITEMS + 1)}),
    refused("/classify: too many inputs", 413, "input", "POST", "/classify", {"input": ["a"] * (MAX_ITEMS + 1)}),
    refused("/predict: too many pairs", 413, "inputs", "POST", "/predict", {"inputs": [["a", "b"]] * (MAX_ITEMS + 1)}),
    served("/v1/rewards: an over-long response is cut as smoe_reward cuts it", "/v1/rewards",
           {"items": [item("hello", LONG, "alice"), item(*SAMPLES[1])]}, rewards_of,
           [("hello", LONG, "alice"), SAMPLES[1]]),
    served("/get_reward: an over-long prompt is cut as smoe_reward cuts it", "/get_reward",
           {"query": [query_of(LONG, "good")], "prompts": [rendered_prompt(LONG)]}, rewards_of, [(LONG, "good")]),
    served("/classify: an over-long rendered text is cut as smoe_reward cuts it", "/classify",
           {"input": rendered_conversation("hi", LONG).removeprefix(TOKENIZER.bos_token), "use_activation": False},
           probs_of, [("hi", LONG)]),
    served("/predict: an over-long pair is cut as smoe_reward cuts it", "/predict",
           {"inputs": [[LONG, LONG]], "raw_scores": True}, scores_of, [(LONG, LONG)]),
    served("/v1/rewards: accents, CJK, emoji and a NUL are scored as smoe_reward scores them", "/v1/rewards",
           {"items": [item("héllo 你好 🙂 \u0000 cat", "good ☃", "bob")]}, rewards_of,
           [("héllo 你好 🙂 \u0000 cat", "good ☃", "bob")]),
]

USERS = [
    refused("/pooling: an unknown user", 404, "user", "POST", "/pooling",
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b"}],
             "user": "nobody"}),
    refused("/v1/rewards: the second item's user is unknown", 404, "items[1].user", "POST", "/v1/rewards",
            {"items": [item(user="alice"), item(user="nobody")]}),
    refused("/classify: a user a/b", 422, "user", "POST", "/classify", {"input": "a", "user": "a/b"}),
    refused("/get_reward: an absolute path as a label", 422, "labels[0]", "POST", "/get_reward",
            {"query": [query_of("hi", "yes")], "labels": ["/etc/passwd"]}),
    refused("/v1/rewards: a user with a NUL", 422, "items[0].user", "POST", "/v1/rewards",
            {"items": [item(user="alice\x00.safetensors")]}),
    refused("/get_reward: a number as a label", 422, "labels[0]", "POST", "/get_reward",
            {"query": [query_of("hi", "yes")], "labels": [5]}),
    served("/get_reward: labels are not users without --user-from labels", "/get_reward",
           {"query": [query_of("hi", "yes")], "labels": ["alice"]}, rewards_of, [("hi", "yes")], server="plain"),
    refused("DELETE /v1/users/..: a parent folder is no user", 422, "name", "DELETE", "/v1/users/..", None, AUTH),
    refused("PUT: a name of 129 characters", 422, "name", "PUT", "/v1/users/" + "a" * 129, {"pairs": [PAIR] * 3},
            AUTH),
    refused("PUT: a wrong key", 401, "Authorization", "PUT", "/v1/users/zoe", {"pairs": [PAIR] * 3},
            {"Authorization": "Bearer not-the-key"}),
    refused("DELETE: no key", 401, "Authorization", "DELETE", "/v1/users/alice"),
    refused("PUT: the key in another case", 401, "Authorization", "PUT", "/v1/users/zoe", {"pairs": [PAIR] * 3},
            {"Authorization": f"Bearer {KEY.upper()}"}),
    refused("PUT: a server started without --api-key", 403, "api_key", "PUT", "/v1/users/zoe", {"pairs": [PAIR] * 3},
            AUTH, server="plain"),
]

ROUTES = [
    refused("GET /v1/rewards: wrong method", 405, "method", "GET", "/v1/rewards"),
    refused("DELETE /get_reward: wrong method", 405, "method", "DELETE", "/get_reward"),
    refused("POST /health: wrong method", 405, "method", "POST", "/health", {}),
    refused("GET /v1/users/alice: wrong method", 405, "method", "GET", "/v1/users/alice"),
    refused("POST /v1/reward: a misspelt path", 404, "path", "POST", "/v1/reward", {"items": [item()]}),
]


@parametrize(MALFORMED + WRONG_TYPES + MISSING_AND_EMPTY + SIZES + USERS + ROUTES)
def test_request(case, tmp_path):
    check_case(case, tmp_path)
    assert healthy(shared_server()) and healthy(shared_server("plain"))  # still serving


def tree(folder: Path) -> dict:
    """Every file under `folder` with its bytes' digest: what a row must leave as it was."""
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def path_like_names(tmp_path):
    """PUT and DELETE under names that are paths (escaped '/', '..', absolute, NUL): each refused, and no file
    outside the routers folder read or written (the whole world's folder, checkpoint included, byte for byte)."""
    url = shared_server()
    before = tree(world()["root"])
    answers = {path: send(method, path, {"pairs": [PAIR] * 3} if method == "PUT" else None, AUTH, url)
               for method, path in (("PUT", "/v1/users/..%2Fescaped"), ("PUT", "/v1/users/%2Ftmp%2Fescaped"),
                                    ("PUT", "/v1/users/a%00b"), ("PUT", "/v1/users/.hidden"),
                                    ("DELETE", "/v1/users/..%2Fcheckpoint%2Fmodel"),
                                    ("DELETE", "/v1/users/..%2Frouters%2Falice"))}
    return answers, before


def check_nothing_escaped(outcome):
    answers, before = outcome
    for path, answer in answers.items():
        assert answer.status in (404, 422) and answer.json()["error"]["param"] in ("path", "name"), (path, answer)
    assert tree(world()["root"]) == before
    assert not Path("/tmp/escaped.safetensors").exists()


def put_a_corrupt_body(tmp_path):
    """PUT alice with records that are no pairs: refused, and her router file and rewards stay as they were."""
    routers = copy_routers(tmp_path)
    before = (routers / "alice.safetensors").read_bytes()
    with own_server(routers) as url:
        answer = send("PUT", "/v1/users/alice", {"pairs": [{"prompt": "a", "chosen": ["b"], "rejected": {}}] * 4},
                      AUTH, url)
        served_ = send("POST", "/v1/rewards", {"items": [item(*SAMPLES[0])]}, url=url).json()["rewards"]
    assert (routers / "alice.safetensors").read_bytes() == before
    assert served_ == pytest.approx([alone(*SAMPLES[0])], abs=1e-5)
    return refusal(answer)


def put_on_a_full_disk(tmp_path):
    """The disk fills while alice's new router is written: the PUT is refused naming the routers folder, her old
    router is still served and on disk, and no temporary file is left in the folder."""
    routers = copy_routers(tmp_path)
    before = tree(routers)

    def half_then_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    with own_server(routers) as url, mock.patch("hf_smoe.personalization.routers.save_file", half_then_full):
        answer = send("PUT", "/v1/users/alice", {"pairs": world()["pairs"]}, AUTH, url)
        served_ = send("POST", "/v1/rewards", {"items": [item(*SAMPLES[0])]}, url=url).json()["rewards"]
    assert tree(routers) == before
    assert served_ == pytest.approx([alone(*SAMPLES[0])], abs=1e-5)
    return refusal(answer)


class Outcome(NamedTuple):
    sample: tuple
    sent: float  # time.monotonic() when the request left
    answer: Answer


@contextlib.contextmanager
def hammering(url: str, samples: list, clients: int = 4):
    """`clients` threads posting `samples` (one a request) until the block ends; yields the list of `Outcome`s,
    filled as the answers come."""
    outcomes, lock, stop = [], threading.Lock(), threading.Event()

    def client(offset):
        for index in range(offset, 10**9):
            if stop.is_set():
                return
            sample, sent = samples[index % len(samples)], time.monotonic()
            answer = send("POST", "/v1/rewards", {"items": [item(*sample)]}, url=url)
            with lock:
                outcomes.append(Outcome(sample, sent, answer))

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, offset) for offset in range(clients)]
        try:
            yield outcomes
        finally:
            stop.set()
            for future in futures:
                future.result()


def wait_for_requests_after(outcomes: list, moment: float, count: int = 8) -> None:
    """Until `count` requests sent after `moment` are answered (a minute at most)."""
    deadline = time.monotonic() + 60
    while sum(outcome.sent > moment for outcome in list(outcomes)) < count:
        assert time.monotonic() < deadline, "the server stopped answering"
        time.sleep(0.05)


def put_while_requests_are_in_flight(tmp_path):
    """alice's requests keep coming while a PUT replaces her router: each answer is her old router's reward or
    her new one's (one router a request, never a mix, never a 5xx), and every request sent after the PUT answered
    gets the new one's."""
    routers = copy_routers(tmp_path)
    old = reference_of(world()["checkpoint"], routers)
    samples = [SAMPLES[0], ("what is a dog", "a kind cat , good", "alice")]
    with own_server(routers) as url, hammering(url, samples) as outcomes:
        wait_for_requests_after(outcomes, 0)
        put = send("PUT", "/v1/users/alice", {"pairs": world()["pairs"], "seed": 5}, AUTH, url)
        done = time.monotonic()
        wait_for_requests_after(outcomes, done)
    return put, done, outcomes, old, reference_of(world()["checkpoint"], routers)


def check_old_or_new(outcome):
    put, done, outcomes, old, new = outcome
    assert put.status == 200, put.text
    assert min(o.sent for o in outcomes) < done < max(o.sent for o in outcomes), "requests before and after"
    rewards = [alone_each({o.sample for o in outcomes}, reference) for reference in (old, new)]
    for sample, sent, answer in outcomes:
        assert answer.status == 200, answer.text
        reward = answer.json()["rewards"][0]
        expected = [each[repr(sample)] for each in rewards]
        assert abs(expected[0] - expected[1]) > 1e-4, "the new router must change alice's reward"
        if sent > done:
            assert reward == pytest.approx(expected[1], abs=1e-5)
        else:
            assert min(abs(reward - value) for value in expected) < 1e-5, (reward, expected)


def delete_while_requests_are_in_flight(tmp_path):
    """bob's requests keep coming while DELETE removes him: each answer is his reward or a 404 naming the user,
    and every request sent after the DELETE answered gets the 404."""
    routers = copy_routers(tmp_path)
    with own_server(routers) as url, hammering(url, [SAMPLES[1]]) as outcomes:
        wait_for_requests_after(outcomes, 0)
        deleted = send("DELETE", "/v1/users/bob", None, AUTH, url)
        done = time.monotonic()
        wait_for_requests_after(outcomes, done)
    return deleted, done, outcomes, routers


def check_answered_or_gone(outcome):
    deleted, done, outcomes, routers = outcome
    assert deleted.status == 200 and not (routers / "bob.safetensors").exists()
    assert min(o.sent for o in outcomes) < done < max(o.sent for o in outcomes), "requests before and after"
    rewards = alone_each({o.sample for o in outcomes})
    for sample, sent, answer in outcomes:
        if answer.status == 200 and sent < done:
            assert answer.json()["rewards"] == pytest.approx([rewards[repr(sample)]], abs=1e-5)
        else:
            assert answer.status == 404, answer.text
            assert answer.json()["error"]["message"].startswith(("items[0].user: ", "user: ")), answer.text


def put_and_delete_at_once(tmp_path):
    """PUTs and DELETEs of one user at once: whichever wins, the user is served exactly when its file exists, and
    the folder loads whole."""
    routers = copy_routers(tmp_path)
    with own_server(routers) as url, ThreadPoolExecutor(6) as pool:
        calls = []
        for seed in range(3):
            calls.append(pool.submit(send, "PUT", "/v1/users/carol", {"pairs": world()["pairs"], "seed": seed},
                                     AUTH, url))
            time.sleep(0.05)
            calls.append(pool.submit(send, "DELETE", "/v1/users/carol", None, AUTH, url))
        statuses = [call.result().status for call in calls]
        listed = "carol" in send("GET", "/v1/models", url=url).json()["data"][0]["users"]
        scored = send("POST", "/v1/rewards", {"items": [item(user="carol")]}, url=url).status
    return statuses, listed, scored, routers


def check_one_state(outcome):
    statuses, listed, scored, routers = outcome
    assert statuses[::2] == [200] * 3 and set(statuses[1::2]) <= {200, 404}, statuses  # PUTs, DELETEs
    on_disk = (routers / "carol.safetensors").exists()
    assert listed == on_disk and scored == (200 if on_disk else 404)
    assert ("carol" in RewardService(world()["checkpoint"], routers).users) == on_disk
    assert not [path for path in routers.iterdir() if path.name.startswith(".")], "no temporary file left"


def leaving_clients(tmp_path):
    """While 4 clients post, others leave: mid-body (Content-Length not reached), mid-chunk, right after sending
    a whole request, and some open a connection and never finish their headers. The staying clients' answers are
    all right, and the server answers after the leavers are gone."""
    request = json.dumps({"items": [item(*SAMPLES[0])]}).encode()
    head = "POST /v1/rewards HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

    def leave(kind):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            if kind == "mid-body":
                sock.sendall(f"{head}Content-Length: {len(request)}\r\n\r\n".encode() + request[:10])
            elif kind == "mid-chunk":
                sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n400\r\n".encode() + request[:10])
            elif kind == "after-request":
                sock.sendall(f"{head}Content-Length: {len(request)}\r\n\r\n".encode() + request)
            else:
                sock.sendall(b"POST /v1/rewards HTTP/1.1\r\nHost: x\r\n")
                time.sleep(2)

    with own_server(copy_routers(tmp_path)) as url:
        port = int(url.rsplit(":", 1)[1])
        with hammering(url, SAMPLES) as outcomes, ThreadPoolExecutor(8) as pool:
            list(pool.map(leave, ["mid-body", "mid-chunk", "after-request", "never-finished"] * 10))
        last = send("POST", "/v1/rewards", {"items": [item(*sample) for sample in SAMPLES]}, url=url)
    return outcomes, last


def check_staying_clients(outcome):
    outcomes, last = outcome
    assert len(outcomes) >= 8
    rewards = alone_each(SAMPLES)
    for sample, _, answer in outcomes:
        assert answer.status == 200 and answer.json()["rewards"] == pytest.approx([rewards[repr(sample)]], abs=1e-5)
    assert last.json()["rewards"] == pytest.approx(list(rewards.values()), abs=1e-5)


def smoe_serve(routers, *flags) -> tuple:
    """`smoe serve` in a process of its own, ready: (process, URL)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "hf_smoe.cli", "serve", str(world()["checkpoint"]),
                                "--routers", str(routers), "--port", str(port), *map(str, flags)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        with contextlib.suppress(OSError):
            if healthy(url):
                return process, url
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    process.kill()
    raise AssertionError("smoe serve did not start in 60 s")


def sigterm_under_load(tmp_path):
    """`smoe serve --max-body-mb 0.05` refuses a 60 kB body (413), then gets SIGTERM while 8 clients post: every
    request it took is answered with the right reward (a client that came later finds the port closed), nothing
    answers 5xx, and it exits 0 after draining."""
    process, url = smoe_serve(copy_routers(tmp_path), "--max-wait-ms", 50, "--max-body-mb", 0.05)
    outcomes, lock, stop = [], threading.Lock(), threading.Event()

    def client(offset):
        index = offset
        while not stop.is_set():
            sample = SAMPLES[index % len(SAMPLES)]
            try:
                outcome = send("POST", "/v1/rewards", {"items": [item(*sample)]}, url=url)
            except (ConnectionError, http.client.HTTPException) as error:
                outcome = error
            with lock:
                outcomes.append((sample, outcome))
            if isinstance(outcome, ConnectionRefusedError):
                return
            index += 1

    try:
        oversize = send("POST", "/v1/rewards", {"items": [item("a" * 60_000)]}, url=url)
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client, offset) for offset in range(8)]
            while len(outcomes) < 16:
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            stop.set()
            for future in futures:
                future.result(timeout=120)
        return oversize, outcomes, code, process.stdout.read()
    finally:
        process.kill()
        process.wait()


def check_drained(outcome):
    oversize, outcomes, code, log = outcome
    assert oversize.status == 413 and oversize.json()["error"]["param"] == "body", oversize.text  # --max-body-mb
    answered = [(sample, answer) for sample, answer in outcomes if isinstance(answer, Answer)]
    assert len(answered) >= 16
    rewards = alone_each(SAMPLES)
    for sample, answer in answered:
        assert answer.status == 200, answer.text
        assert answer.json()["rewards"] == pytest.approx([rewards[repr(sample)]], abs=1e-5)
    failures = {type(answer).__name__ for _, answer in outcomes if not isinstance(answer, Answer)}
    assert failures <= {"ConnectionRefusedError", "ConnectionResetError", "RemoteDisconnected"}, failures
    assert code == 0, log[-3000:]
    assert "Finished server process" in log and "Traceback" not in log, log[-3000:]


FAULTS = [
    Case("PUT and DELETE under path-like names touch nothing outside the routers folder", "handled", "",
         path_like_names, check_nothing_escaped),
    Case("PUT of a corrupt body keeps the user's router", "error", "HTTP 422 pairs: ", put_a_corrupt_body),
    Case("PUT on a full disk keeps the user's router", "error", "HTTP 507 routers: ", put_on_a_full_disk),
    Case("PUT while the user's requests are in flight", "handled", "", put_while_requests_are_in_flight,
         check_old_or_new),
    Case("DELETE while the user's requests are in flight", "handled", "", delete_while_requests_are_in_flight,
         check_answered_or_gone),
    Case("PUT and DELETE of one user at once", "handled", "", put_and_delete_at_once, check_one_state),
    Case("clients that leave mid-request or never finish", "handled", "", leaving_clients, check_staying_clients),
]


@parametrize(FAULTS)
def test_fault(case, tmp_path):
    check_case(case, tmp_path)


@pytest.mark.slow
@parametrize([Case("smoe serve: --max-body-mb refuses an oversize body; SIGTERM under load drains, exits 0",
                   "handled", "", sigterm_under_load, check_drained)])
def test_sigterm(case, tmp_path):
    check_case(case, tmp_path)


@pytest.mark.slow
def test_bench_serve_faults_counts_every_request(tmp_path):
    """`smoe bench serve --faults` for a few seconds on a tiny backbone: every bad request is counted under the 4xx
    its kind earns, every good one got smoe_reward's reward, the server neither crashed nor answered 5xx, and the
    counts add up."""
    from hf_smoe.bench.serving import bench_serve_faults

    results = bench_serve_faults(world()["backbone"], clients=4, seconds=5, texts=8)
    kinds = results["by_kind"]
    assert kinds["good"]["requests"] >= 20 and set(kinds["good"]["statuses"]) == {"200"}
    expected = {"malformed_json": "400", "wrong_type": "422", "unknown_user": "404", "oversize_body": "413",
                "too_many_items": "413"}
    for kind, status in expected.items():
        assert kinds[kind]["requests"] > 0 and set(kinds[kind]["statuses"]) == {status}, (kind, kinds[kind])
    assert kinds["disconnect"]["requests"] > 0
    assert results["wrong_rewards"] == 0 and results["crashes"] == 0 and results["client_errors_5xx"] == 0
    assert results["requests"] == sum(kind["requests"] for kind in kinds.values())
    assert results["checked"] < 1e-5 and results["exit_status"] == 0 and results["passed"]
    assert 0 < results["good_p50_s"] <= results["good_p99_s"]
