"""A `TextGenerator` behind any OpenAI-compatible chat server (vLLM, TGI, `transformers serve`, hosted APIs).

Requests go through `huggingface_hub.InferenceClient.chat_completion` (payload building and response parsing), but
over this module's own HTTP client: huggingface_hub enforces offline mode (`HF_HUB_OFFLINE=1`, read once into
`huggingface_hub.constants.HF_HUB_OFFLINE` at import) in a request event hook of the process-wide session that
`get_session()` returns, and `InferenceClient` sends every request through that session, so it refuses every URL,
loopback included, while offline. `_OwnSessionClient` overrides only the client's POST to use a private
`httpx2.Client` without that hook: no global state is touched, and every other Hub call in the process stays offline.
"""

import math
import os
import time
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
        return response.content

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
            502, 503, 504), waiting `backoff * 2**try` seconds (or the server's Retry-After); any other HTTP error
            raises `EndpointError` at once.
        backoff: the first wait between tries, in seconds.
        timeout: seconds to wait for one answer (None: no limit). 600 as OpenAI's client: a CPU server given 8 long
            describer prompts at once answers the last after minutes, and a timed-out request is sent again.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 4, backoff: float = 1.0, timeout: float | None = 600.0):
        if max_concurrency < 1 or max_retries < 0:
            raise InputError(f"max_concurrency must be >= 1 and max_retries >= 0; got {max_concurrency} and "
                             f"{max_retries}.")
        self.base_url, self.model = base_url, model
        self.max_concurrency, self.max_retries, self.backoff = max_concurrency, max_retries, backoff
        self.identity = f"endpoint:{base_url}|model={model}|greedy"
        self._client = _OwnSessionClient(base_url, api_key or os.environ.get("OPENAI_API_KEY"), timeout)
        self._logprobs = True  # until the server rejects them

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, seed: int | None = None) -> list[str]:
        return self._map(lambda prompt: self._chat(prompt, max_new_tokens, seed=seed).message.content or "", prompts)

    def judge(self, prompts: Sequence[str]) -> list[Judgment]:
        """YES/NO with P(YES) from the first answer token's top log-probabilities when the server returns them
        (transformers serve does not); otherwise the probability is None and the answer is read from the text."""
        return self._map(self._judge_one, prompts)

    def close(self):
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _judge_one(self, prompt: str) -> Judgment:
        if self._logprobs:
            try:
                choice = self._chat(prompt, JUDGE_TOKENS, logprobs=True)
            except EndpointError as error:
                if error.status not in (400, 422):  # a server that validates fields rejects what it lacks
                    raise
                choice = self._chat(prompt, JUDGE_TOKENS)
                self._logprobs = False
        else:
            choice = self._chat(prompt, JUDGE_TOKENS)
        text = choice.message.content or ""
        probability = None
        if choice.logprobs is not None and choice.logprobs.content:
            probability = yes_probability(_first_token_log_probs(choice.logprobs.content[0]))
        return Judgment(probability > 0.5 if probability is not None else parse_yes_no(text), probability, text)

    def _chat(self, prompt: str, max_tokens: int, logprobs: bool = False, seed: int | None = None):
        """One chat completion of `prompt` as a single user message, greedy or sampled with `seed` (`SAMPLING`;
        servers that honour OpenAI's `seed` repeat it), retried on transient failures."""
        extra = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if logprobs else {}
        decoding = {"temperature": 0.0, "seed": 0} if seed is None else {**SAMPLING, "seed": seed}
        for attempt in range(self.max_retries + 1):
            try:
                return self._client.chat_completion([{"role": "user", "content": prompt}], model=self.model,
                                                    max_tokens=max_tokens, **decoding, **extra).choices[0]
            except TRANSIENT_ERRORS as error:
                failure, status, wait = f"{type(error).__name__}: {error}", None, None
            except httpx2.HTTPStatusError as error:
                status = error.response.status_code
                failure = f"HTTP {status}: {_server_message(error.response)}"
                if status not in RETRY_STATUS:
                    raise EndpointError(f"{self.base_url} (model {self.model!r}) answered {failure}", status) from None
                wait = _retry_after(error.response)
            if attempt < self.max_retries:
                time.sleep(min(wait if wait is not None else self.backoff * 2 ** attempt, MAX_WAIT))
        raise EndpointError(f"{self.base_url} (model {self.model!r}) failed {self.max_retries + 1} tries, the last "
                            f"with {failure}", status)

    def _map(self, call, prompts: Sequence[str]) -> list:
        """`call` on every prompt, at most `max_concurrency` at a time, in order; the first failure cancels the rest."""
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(call, prompt) for prompt in prompts]
            try:
                return [future.result() for future in futures]
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise


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
