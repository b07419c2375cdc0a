"""A `TextGenerator` behind any OpenAI-compatible chat server (vLLM, TGI, `transformers serve`, hosted APIs).

Requests go through `huggingface_hub.InferenceClient.chat_completion` (payload building and response parsing), but
over this module's own HTTP client: huggingface_hub enforces offline mode (`HF_HUB_OFFLINE=1`, read once into
`huggingface_hub.constants.HF_HUB_OFFLINE` at import) in a request event hook of the process-wide session that
`get_session()` returns, and `InferenceClient` sends every request through that session, so it refuses every URL,
loopback included, while offline. `_OwnSessionClient` overrides only the client's POST to use a private
`httpx2.Client` without that hook: no global state is touched, and every other Hub call in the process stays offline.
"""

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx2
from huggingface_hub import InferenceClient

from ...errors import EndpointError, InputError
from .base import SAMPLING, Judgment, TextGenerator, parse_yes_no, yes_probability

# Worth another try: a gateway, an overloaded or rate-limiting server, a request timeout. A 500 is not: it is a bug
# or a model the server cannot run (transformers serve answers a bare 500 for a base model without an LM head or a
# model name it cannot load), and it repeats identically.
RETRY_STATUS = (408, 429, 502, 503, 504)
TRANSIENT_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
JUDGE_TOKENS = 4  # the first token carries the probability; a few more let the text fallback read "Yes." etc.
TOP_LOGPROBS = 5
MAX_WAIT = 60.0
PROBE_TIMEOUT = httpx2.Timeout(1.0, connect=10.0)  # a connection proves a server listens; its answer is not awaited
# What to do about a request the server refused, by HTTP status (any other status: the server's message says it).
STATUS_FIXES = {401: "give a key it accepts ($OPENAI_API_KEY)", 403: "give a key it accepts ($OPENAI_API_KEY)",
                404: "check the URL and --{field}-model (the name of a model the server serves)",
                429: "it is limiting the request rate: wait and run again (answers so far are cached)",
                500: "read the server's log (a model it cannot run, e.g. one without an LM head, answers 500)"}


class NotACompletion(ValueError):
    """A server's successful answer that is not an OpenAI chat completion: an HTML page, bytes, JSON of another
    shape."""


def completion_problem(content: bytes) -> str | None:
    """What keeps a successful answer's body from being a chat completion whose first choice has a text (or null)
    `message.content`, in words; None when it is one."""
    try:
        body = json.loads(content)
    except ValueError:  # UnicodeDecodeError included
        text = " ".join(content[:120].decode("utf-8", errors="replace").split())
        return f"a body that is not JSON ({text!r})" if text else "an empty body"
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list):
        return "JSON without a `choices` list"
    if not choices:
        return "an empty `choices` list"
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), (str, type(None))):
        return "a choice without a text `message.content`"
    return None


class _OwnSessionClient(InferenceClient):
    """An `InferenceClient` whose requests use a private `httpx2.Client` instead of huggingface_hub's shared session,
    so they skip the Hub's offline check (see the module docstring), and carry only the caller's API key: the Hub
    token that `InferenceClient` adds from the local login is never sent to a third-party server."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float | None):
        super().__init__(base_url=base_url, timeout=timeout)
        self._api_key = api_key
        self._http = httpx2.Client(follow_redirects=True)

    def _inner_post(self, request_parameters, *, stream: bool = False) -> bytes:
        """Non-streaming POST (the only kind `EndpointGenerator` makes); HTTP errors raise `httpx2.HTTPStatusError`."""
        headers = {key: value for key, value in request_parameters.headers.items() if key.lower() != "authorization"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        response = self._http.post(request_parameters.url, json=request_parameters.json,
                                   content=request_parameters.data, headers=headers, timeout=self.timeout)
        response.raise_for_status()
        problem = completion_problem(response.content)
        if problem:
            raise NotACompletion(problem)
        return response.content

    def check_reachable(self, base_url: str) -> None:
        """Raises `httpx2.ConnectError` (or `ConnectTimeout`) when nothing accepts a connection at `base_url`; once
        connected, whatever the server does with a GET (an answer, an error, none within a second) means it
        listens."""
        try:
            self._http.get(base_url, timeout=PROBE_TIMEOUT)
        except (httpx2.ConnectError, httpx2.ConnectTimeout):
            raise
        except httpx2.HTTPError:
            pass

    def close(self):
        super().close()
        self._http.close()


class EndpointGenerator(TextGenerator):
    """Greedy answers and YES/NO judgments from an OpenAI-compatible chat-completion server.

    Args:
        base_url: the server, e.g. `http://127.0.0.1:8000` or `.../v1` (`/v1/chat/completions` is appended as needed).
        model: the model name sent with each request. vLLM and hosted APIs need the name they serve; transformers
            serve loads the local folder path or Hub id given here (or, when started with a model, needs exactly
            that name); None sends InferenceClient's placeholder, which only servers of a single model (TGI) accept.
        api_key: sent as a bearer token; default `$OPENAI_API_KEY`, else none. A Hugging Face token is never sent
            implicitly (pass it here for Hugging Face's own inference servers).
        max_concurrency: requests in flight at once; answers come back in the order of the prompts.
        max_retries: further tries of a request after a transient failure (no answer, a timeout, HTTP 408, 429,
            502, 503, 504), waiting `backoff * 2**try` seconds (or the server's Retry-After; none after a timeout,
            which has waited already); any other HTTP error, or an answer that is not a chat completion, raises
            `EndpointError` at once.
        backoff: the first wait between tries, in seconds.
        timeout: seconds to wait for one answer (None: no limit). 600 as OpenAI's client: a CPU server given 8 long
            describer prompts at once answers the last after minutes, and a timed-out request is sent again.
        field: the flag that named this server (`generator` or `judge`), which every error names.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 4, backoff: float = 1.0, timeout: float | None = 600.0,
                 field: str = "generator"):
        if max_concurrency < 1 or max_retries < 0:
            raise InputError(f"max_concurrency must be >= 1 and max_retries >= 0; got {max_concurrency} and "
                             f"{max_retries}.")
        self.base_url, self.model, self.field, self.timeout = base_url, model, field, timeout
        self.max_concurrency, self.max_retries, self.backoff = max_concurrency, max_retries, backoff
        self.identity = f"endpoint:{base_url}|model={model}|greedy"
        self._client = _OwnSessionClient(base_url, api_key or os.environ.get("OPENAI_API_KEY"), timeout)
        self._logprobs = True  # until the server rejects them

    def check_reachable(self) -> None:
        """Refuses, before any work, a URL where nothing listens (a server not started, a wrong host or port)."""
        try:
            self._client.check_reachable(self.base_url)
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as error:
            raise InputError(f"{self.field}: nothing answers at {self.base_url} ({error}); start the server, or fix "
                             "the URL.") from None

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, seed: int | None = None) -> list[str]:
        return self._texts(self._map(lambda prompt: self._chat(prompt, max_new_tokens, seed=seed), prompts))

    def judge(self, prompts: Sequence[str]) -> list[Judgment]:
        """YES/NO with P(YES) from the first answer token's top log-probabilities when the server returns them
        (transformers serve does not); otherwise the probability is None and the answer is read from the text."""
        choices = self._map(self._judge_choice, prompts)
        return [_judgment(choice, text) for choice, text in zip(choices, self._texts(choices))]

    def close(self):
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _judge_choice(self, prompt: str):
        if self._logprobs:
            try:
                return self._chat(prompt, JUDGE_TOKENS, logprobs=True)
            except EndpointError as error:
                if error.status not in (400, 422):  # a server that validates fields rejects what it lacks
                    raise
                self._logprobs = False
        return self._chat(prompt, JUDGE_TOKENS)

    def _texts(self, choices: list) -> list[str]:
        """Each choice's text; one without any (`content` null) is an empty answer, and one warning says how many."""
        missing = sum(choice.message.content is None for choice in choices)
        if missing:
            warnings.warn(f"{self.field}: {missing} of {len(choices)} answers of {self.base_url} came without text "
                          "(message.content null); they count as empty answers.", stacklevel=3)
        return [choice.message.content or "" for choice in choices]

    def _chat(self, prompt: str, max_tokens: int, logprobs: bool = False, seed: int | None = None):
        """One chat completion of `prompt` as a single user message, greedy or sampled with `seed` (`SAMPLING`;
        servers that honour OpenAI's `seed` repeat it), retried on transient failures."""
        extra = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if logprobs else {}
        decoding = {"temperature": 0.0, "seed": 0} if seed is None else {**SAMPLING, "seed": seed}
        server = f"{self.field}: {self.base_url} (model {self.model!r})"
        for attempt in range(self.max_retries + 1):
            try:
                return self._client.chat_completion([{"role": "user", "content": prompt}], model=self.model,
                                                    max_tokens=max_tokens, **decoding, **extra).choices[0]
            except NotACompletion as error:
                raise EndpointError(f"{server} answered {error}, not an OpenAI chat completion; give the URL of an "
                                    "OpenAI-compatible server (http://HOST:PORT or http://HOST:PORT/v1).") from None
            except httpx2.TimeoutException as error:  # the wait is over already: the next try starts at once
                failure, status, wait = f"{type(error).__name__}: no answer within {self.timeout} s", None, 0.0
                fix = "raise --endpoint-timeout if the server is slow, or check that it is running"
            except TRANSIENT_ERRORS as error:
                failure, status, wait = f"{type(error).__name__}: {error}", None, None
                fix = "check that the server is running and reachable"
            except httpx2.HTTPStatusError as error:
                status = error.response.status_code
                failure = f"HTTP {status}: {_server_message(error.response)}"
                fix = STATUS_FIXES.get(status, "see the server's message").format(field=self.field)
                if status not in RETRY_STATUS:
                    raise EndpointError(f"{server} answered {failure}; {fix}.", status) from None
                wait = _retry_after(error.response)
            if attempt < self.max_retries:
                time.sleep(min(wait if wait is not None else self.backoff * 2 ** attempt, MAX_WAIT))
        raise EndpointError(f"{server} failed {self.max_retries + 1} tries, the last with {failure}; {fix}.", status)

    def _map(self, call, prompts: Sequence[str]) -> list:
        """`call` on every prompt, at most `max_concurrency` at a time, in order; the first failure cancels the rest."""
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(call, prompt) for prompt in prompts]
            try:
                return [future.result() for future in futures]
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise


def _judgment(choice, text: str) -> Judgment:
    """A judge's answer: P(YES) from the first token's log-probabilities when given (the answer is P(YES) > 0.5),
    else the answer read from the text."""
    probability = None
    if choice.logprobs is not None and choice.logprobs.content:
        probability = yes_probability(_first_token_log_probs(choice.logprobs.content[0]))
    return Judgment(probability > 0.5 if probability is not None else parse_yes_no(text), probability, text)


def _first_token_log_probs(first) -> dict:
    """The first answer token's top alternatives as text -> log-probability; token ids that share a surface form
    (byte-level vocabularies have some) are pooled."""
    log_probs = {}
    for candidate in first.top_logprobs or [first]:
        known, new = log_probs.get(candidate.token, -math.inf), candidate.logprob
        log_probs[candidate.token] = max(known, new) + math.log1p(math.exp(-abs(known - new)))
    return log_probs


def _server_message(response: httpx2.Response) -> str:
    """The server's own explanation on one line: OpenAI's `error.message`, FastAPI's `detail`, or the body."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        error = body.get("error")
        body = ((error.get("message") if isinstance(error, dict) else error) or body.get("detail")
                or body.get("message") or body)
    return " ".join(str(body).split())[:500] or response.reason_phrase


def _retry_after(response: httpx2.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None
