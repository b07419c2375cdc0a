"""The reward server's HTTP face (FastAPI): each protocol's route turns its request into encoded (prompt, response)
rows and users, the `Coalescer` scores them with other requests' rows in one pass, and the route answers in its
protocol's shape. Every refusal is a `RequestError`: a 4xx (503 when overloaded) with a JSON body naming the field;
nothing a client sends reaches a 500 or takes the server down."""

import asyncio
import contextlib
import hmac
import logging
import re
import time
import uuid

from fastapi import Depends, FastAPI, Header
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..data import load_pairs
from ..errors import InputError
from ..features.text_cache import default_batch_tokens
from ..runtime import first_line
from .batching import Coalescer
from .errors import RequestError
from .protocols import (ClassifyRequest, OpenRLHFRequest, PoolingRequest, PredictRequest, RewardsRequest,
                        UserRequest, sigmoid)
from .service import RewardService, check_user_name

logger = logging.getLogger("hf_smoe.serve")
MiB = 1 << 20


def create_app(service: RewardService, *, api_key: str | None = None, max_batch_tokens: int | None = None,
               max_wait_ms: float = 5.0, max_queue_tokens: int | None = None, max_items: int = 1024,
               max_body_bytes: int = 16 * MiB, user_from: str | None = None, coalesce: bool = True) -> FastAPI:
    """The app serving `service`.

    Args:
        api_key: the key `PUT`/`DELETE /v1/users/...` need (`Authorization: Bearer KEY`); scoring stays open, since
            OpenRLHF and verl send no credentials. None: users cannot be changed over HTTP.
        max_batch_tokens: tokens one coalesced backbone pass takes at most (default: the embedding cache's batch for
            the model's device, 1,024 on CPU and 16,384 on CUDA: larger CPU batches run slower per token).
        max_wait_ms: how long the first request of a batch waits for others to join it.
        max_queue_tokens: tokens waiting beyond which requests get 503 (default: 64 batches' worth).
        max_items: texts one request may carry (413 above).
        max_body_bytes: request body size (413 above).
        user_from: "labels" routes each OpenRLHF sample by its `labels[i]` (the column OpenRLHF passes through).
        coalesce: False scores every request alone (the naive baseline of `smoe bench serve`).
    """
    max_batch_tokens = max_batch_tokens or default_batch_tokens(service.model.head.experts.weight.device)
    coalescer = Coalescer(service.score, service.routers, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms,
                          max_queue_tokens=max_queue_tokens or 64 * max_batch_tokens, coalesce=coalesce)
    user_writes = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(_):
        worker = asyncio.create_task(coalescer.run())
        yield
        worker.cancel()
        coalescer.worker.shutdown(wait=True)

    app = FastAPI(title="hf_smoe reward server", lifespan=lifespan)
    app.state.service, app.state.coalescer = service, coalescer
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    add_error_handlers(app)

    def check_count(count: int, field: str) -> None:
        if count > max_items:
            raise RequestError(413, field, f"{count} texts in one request; the server takes at most {max_items} "
                               "(--max-items): split the request.")

    async def scored(encodings: list, users: list) -> dict:
        return await coalescer.submit(encodings, users) if encodings else {
            "rewards": [], "routing_weights": [], "expert_rewards": []}

    def require_key(authorization: str | None = Header(default=None)) -> None:
        if api_key is None:
            raise RequestError(403, "api_key", "changing users needs the server started with --api-key KEY (or "
                               "$SMOE_API_KEY).")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise RequestError(401, "Authorization", "missing or wrong API key; send 'Authorization: Bearer KEY'.")

    @app.post("/v1/rewards")
    async def rewards(request: RewardsRequest):
        check_count(len(request.items), "items")
        if not request.items:
            raise RequestError(422, "items", "empty list; send at least one {prompt, response} item.")
        for index, item in enumerate(request.items):
            check_prompt(item.prompt, f"items[{index}].prompt")
            if item.user is not None:
                check_user_name(item.user, f"items[{index}].user")
        users = service.check_users([item.user for item in request.items], "items[{}].user")
        pairs = [(as_prompt(item.prompt), item.response) for item in request.items]
        result = await scored(await run_in_threadpool(service.encode, pairs, "items"), users)
        body = {"model": service.name, "rewards": result["rewards"]}
        if request.explain:
            body["items"] = [{"reward": reward, "user": user, **service.explain(routing, experts)} for
                             reward, user, routing, experts in zip(result["rewards"], users, result["routing_weights"],
                                                                   result["expert_rewards"])]
        return body

    @app.post("/get_reward")
    async def get_reward(request: OpenRLHFRequest):
        count = len(request.query)
        check_count(count, "query")
        for field, values in (("prompts", request.prompts), ("labels", request.labels)):
            if values is not None and len(values) != count:
                raise RequestError(422, field, f"{len(values)} {field} for {count} queries; send one per query.")
        users = [None] * count
        if user_from == "labels":
            users = [None if label in (None, "") else check_user_name(label, f"labels[{index}]")
                     for index, label in enumerate(request.labels or users)]
        service.check_users(users, "labels[{}]")
        encodings = await run_in_threadpool(service.encode_rendered, request.query, request.prompts, "query")
        values = (await scored(encodings, users))["rewards"]
        return {"rewards": values, "scores": values, "extra_logs": {}}

    async def classified(request: ClassifyRequest) -> tuple:
        """(scores, prompt tokens) of a vLLM pooling request."""
        user = None if request.user in (None, "") else check_user_name(request.user)
        service.check_users([user], "user")
        if request.messages is not None:
            messages = [message.model_dump() for message in request.messages]
            if len(messages) < 2 or messages[-1]["role"] != "assistant":
                raise RequestError(422, "messages", "must end with the assistant's response after the prompt's "
                                   "messages.")
            check_prompt(messages[:-1], "messages")
            encodings = await run_in_threadpool(service.encode, [(messages[:-1], messages[-1]["content"])],
                                                "messages")
        elif request.input is not None:
            texts = [request.input] if isinstance(request.input, str) else request.input
            check_count(len(texts), "input")
            for index, text in enumerate(texts):
                if not text.strip():
                    raise RequestError(422, f"input[{index}]", "empty text; send the rendered prompt + response.")
            encodings = await run_in_threadpool(service.encode_rendered, texts, None, "input")
        else:
            raise RequestError(422, "input", "give `input` (text rendered with the chat template) or `messages`.")
        values = (await scored(encodings, [user] * len(encodings)))["rewards"]
        scores = [sigmoid(value) if request.activated() else value for value in values]
        return scores, sum(len(encoding["input_ids"]) for encoding in encodings)

    def pooling_envelope(prefix: str, model, data: list, tokens: int) -> dict:
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                "model": model or service.name, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                          "prompt_tokens_details": None}}

    @app.post("/classify")
    async def classify(request: ClassifyRequest):
        scores, tokens = await classified(request)
        return pooling_envelope("classify", request.model, [
            {"index": index, "label": "reward", "probs": [score], "num_classes": 1}
            for index, score in enumerate(scores)], tokens)

    @app.post("/pooling")
    async def pooling(request: PoolingRequest):
        scores, tokens = await classified(request)
        return pooling_envelope("pool", request.model, [
            {"index": index, "object": "pooling", "data": [score]} for index, score in enumerate(scores)], tokens)

    @app.post("/predict")
    @app.post("/")
    async def predict(request: PredictRequest):
        inputs = request.inputs
        batch = isinstance(inputs, list) and (not inputs or isinstance(inputs[0], list))  # [] is an empty batch
        items = inputs if batch else [[inputs] if isinstance(inputs, str) else inputs]
        check_count(len(items), "inputs")
        if not items:
            raise RequestError(422, "inputs", "empty; send a rendered text, a [prompt, response] pair, or a list.")
        for index, item in enumerate(items):
            if len(item) not in (1, 2) or not item[0].strip():
                raise RequestError(422, f"inputs[{index}]", "must be one non-empty rendered text or a [prompt, "
                                   "response] pair.")
        pairs = [index for index, item in enumerate(items) if len(item) == 2]
        rendered = [index for index, item in enumerate(items) if len(item) == 1]
        encodings = [None] * len(items)
        for indices, encoded in (
                (pairs, await run_in_threadpool(service.encode, [tuple(items[i]) for i in pairs], "inputs")),
                (rendered, await run_in_threadpool(service.encode_rendered, [items[i][0] for i in rendered], None,
                                                   "inputs"))):
            for index, encoding in zip(indices, encoded):
                encodings[index] = encoding
        values = (await scored(encodings, [None] * len(items)))["rewards"]
        answers = [[{"label": "reward", "score": sigmoid(value) if request.activated() else value}]
                   for value in values]
        # TEI answers one input flat; huggingface_hub (which always sends `parameters`) reads a nested list
        return answers if batch or request.parameters is not None else answers[0]

    @app.put("/v1/users/{name}", dependencies=[Depends(require_key)])
    async def put_user(name: str, request: UserRequest):
        check_user_name(name, "name")
        from datasets import Dataset

        try:
            records = Dataset.from_list(request.pairs)
        except (ValueError, TypeError) as error:  # pyarrow: one field, two types
            raise RequestError(422, "pairs", f"the records do not share one schema ({first_line(error)}); give "
                               "every record the same fields, with texts as strings.") from None
        try:
            pairs = load_pairs(records)
        except (InputError, ValueError, TypeError) as error:
            raise RequestError(422, "pairs", str(error)) from None
        async with user_writes:  # two PUTs of one user write one after the other
            results = await asyncio.get_running_loop().run_in_executor(
                coalescer.worker, service.add_user, name, pairs, request.method, request.n, request.seed)
        return {"user": name, **results}

    @app.delete("/v1/users/{name}", dependencies=[Depends(require_key)])
    async def delete_user(name: str):
        check_user_name(name, "name")
        async with user_writes:
            service.remove_user(name)
        return {"user": name, "deleted": True}

    @app.get("/health")
    async def health():
        return {"status": "ok", "users": len(service.users), "batches": coalescer.batches}

    @app.get("/v1/models")
    async def models():
        experts = [{"expert": k, **service.descriptions.get(k, {"description": None})}
                   for k in range(service.model.config.num_experts)]
        return {"object": "list", "data": [{
            "id": service.name, "object": "model", "owned_by": "hf_smoe", "checkpoint": service.checkpoint,
            "experts": experts, "users": service.users,
            "encoding": {"max_length": service.reward.max_length, "pooling": service.model.config.pooling,
                         "prompt_representation": service.model.config.prompt_representation}}]}

    return app


def as_prompt(prompt):
    return prompt if isinstance(prompt, str) else [message.model_dump() for message in prompt]


def check_prompt(prompt, field: str) -> None:
    contents = [prompt] if isinstance(prompt, str) else [
        message["content"] if isinstance(message, dict) else message.content for message in prompt]
    if not any(content.strip() for content in contents):
        raise RequestError(422, field, "empty text; the router reads the prompt, send one.")


def add_error_handlers(app: FastAPI) -> None:
    """Every failure answers JSON naming the field: validation errors by their location in the body, a body that
    cannot be read as JSON as 400 `body` (415 `Content-Type` when it was not sent as JSON), a wrong method as 405
    `method`, unknown routes as 404, and anything unexpected as a 500 without a traceback (logged here)."""

    @app.exception_handler(RequestError)
    async def request_error(_, error: RequestError, headers: dict | None = None):
        headers = {**(headers or {}), **({"Retry-After": str(error.retry_after)} if error.retry_after else {})}
        return JSONResponse(error.body(), status_code=error.status, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, error: RequestValidationError):
        return await request_error(_, validation_refusal(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        if error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            refusal = RequestError(405, "method", f"{request.method} is not allowed on {request.url.path}; use "
                                   f"{allowed}.")
        elif error.status_code == 400 and error.__cause__ is not None:  # FastAPI could not read the body
            refusal = RequestError(400, "body", f"not valid JSON ({first_line(error.__cause__)}); send a UTF-8 "
                                   "JSON object.")
        else:
            refusal = RequestError(error.status_code, "path", str(error.detail))
        return await request_error(request, refusal, error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        logger.exception("while serving %s", request.url.path)
        return JSONResponse({"error": {"message": f"internal error ({type(error).__name__}); the server logged it.",
                                       "type": "server_error", "param": None, "code": 500}}, status_code=500)


TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list"}


def is_union_member(part) -> bool:
    """pydantic names the member of a union it tried (`str`, `list[str]`, `list[Message]`) in an error's
    location; it is no field of the request."""
    return isinstance(part, str) and (part in TYPE_NAMES or not part.isidentifier())


def type_name(member: str) -> str:
    """`list[str]` from pydantic's `list[function-after[unicode_text(), str]]`: the type a client sends."""
    return re.sub(r"function-\w+\[[^,\]]*, ([^\]]*)\]", r"\1", member)


def field_name(parts) -> str:
    """`items[0].prompt` from the location parts ("items", 0, "prompt"), union members left out."""
    parts = [part for part in parts if not is_union_member(part)]
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".") or "body"


def validation_refusal(errors: list) -> RequestError:
    """The first thing wrong with a request body, named by its field. A value that no member of a union accepts is
    reported by the member that got furthest into it (a wrong type inside a batch of pairs names `inputs[0][0]`),
    or, where every member refused its type outright, as the members it could have been."""
    first = errors[0]
    parts = first["loc"][1:]  # after "body"
    if first.get("type") == "json_invalid":
        return RequestError(400, "body", "not valid JSON; send a JSON object.")
    if not parts and isinstance(first.get("input"), bytes):  # the body was not parsed: not declared JSON
        return RequestError(415, "Content-Type", "the body must be sent as 'Content-Type: application/json'.")
    member = next((index for index, part in enumerate(parts) if is_union_member(part)), None)
    if member is not None:  # pydantic reports what each member of the union found wrong
        tried = [error for error in errors if error["loc"][1:member + 1] == parts[:member]
                 and len(error["loc"]) > member + 1 and is_union_member(error["loc"][member + 1])]
        first = max(tried, key=lambda error: (len(error["loc"]), not error["type"].endswith("_type")))
        if len(first["loc"]) == member + 2 and first["type"].endswith("_type"):  # no member got past the type
            members = " or ".join(dict.fromkeys(type_name(error["loc"][member + 1]) for error in tried))
            return RequestError(422, field_name(parts[:member]), f"must be {members} (got "
                                f"{str(first.get('input'))[:60]!r}).")
    message = first.get("msg", "invalid").removeprefix("Value error, ")
    return RequestError(422, field_name(first["loc"][1:]), f"{message} (got {str(first.get('input'))[:60]!r}).")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes answers 413 before the app reads it (declared by
    Content-Length; a chunked body is counted as it arrives, held, and handed on whole)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                return await self.refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.refuse(scope, receive, send)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay():
            nonlocal whole
            message, whole = whole, None
            return message if message is not None else await receive()

        await self.app(scope, replay, send)

    async def refuse(self, scope, receive, send):
        error = RequestError(413, "body", f"larger than {self.limit} bytes (--max-body-mb); split the request.")
        await JSONResponse(error.body(), status_code=413)(scope, receive, send)
