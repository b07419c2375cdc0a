"""Serve a checkpoint's personalized rewards over HTTP.

Speaks OpenRLHF's remote reward model (POST /get_reward), vLLM's pooling API as verl calls it (POST /classify,
/pooling), Text Embeddings Inference (POST /predict and /, what huggingface_hub's InferenceClient.text_classification
posts) and the native POST /v1/rewards (with `explain`); each request is routed by its user's router (--routers DIR:
one `smoe adapt` router file per user, the file stem is the user's name). Concurrent requests share one backbone
pass. PUT /v1/users/NAME learns a user from labeled pairs and DELETE removes one; both need --api-key. Texts are
encoded as the checkpoint was trained.
"""

import ipaddress
import os
import signal
from dataclasses import dataclass, field
from typing import Literal

from ...errors import InputError
from ..arguments import AT_LEAST_ONE, CACHE_DIR_HELP, CHECKPOINT_LENGTH_HELP, POSITIVE, CheckpointArguments
from ..parsing import CommandParser

API_KEY_VARIABLE = "SMOE_API_KEY"


@dataclass
class ServeArguments:
    routers: str | None = field(default=None, metadata={
        "metavar": "DIR", "help": "folder of router files, one per user (file stem = user name); users added over "
                                  "HTTP are written there"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind; anything but loopback needs an API key"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    api_key: str | None = field(default=None, metadata={
        "help": f"key that PUT/DELETE /v1/users need as 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE})"})
    max_batch_tokens: int | None = field(default=None, metadata={
        "help": "tokens one coalesced backbone pass takes at most (default: 1024 on CPU, 16384 on CUDA)"})
    max_wait_ms: float = field(default=5.0, metadata={
        "help": "how long the first request of a batch waits for others to join it"})
    max_queue_tokens: int | None = field(default=None, metadata={
        "help": "tokens waiting beyond which requests get 503 with Retry-After (default: 64 batches' worth)"})
    max_length: int | None = field(default=None, metadata={"help": CHECKPOINT_LENGTH_HELP})
    max_items: int = field(default=1024, metadata={"help": "texts one request may carry (413 above)"})
    max_body_mb: float = field(default=16.0, metadata={"help": "request body size in MiB (413 above)"})
    user_from: Literal["none", "labels"] = field(default="none", metadata={
        "help": "'labels': route each OpenRLHF sample by its labels[i] (OpenRLHF passes any dataset column there)"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: a GPU if any)"})
    cache_dir: str | None = field(default=None, metadata={"help": CACHE_DIR_HELP})

    def __post_init__(self):
        AT_LEAST_ONE.check(self, "max_batch_tokens", "max_queue_tokens", "max_length", "max_items")
        POSITIVE.check(self, "max_body_mb")
        if not 0 <= self.max_wait_ms < 10_000:
            raise InputError(f"--max-wait-ms: must be between 0 and 10000, got {self.max_wait_ms}")
        if not 0 < self.port < 65536:
            raise InputError(f"--port: must be between 1 and 65535, got {self.port}")
        self.api_key = self.api_key or os.environ.get(API_KEY_VARIABLE) or None
        if not is_loopback(self.host) and not self.api_key:
            raise InputError(f"--host: {self.host} is reachable from other machines; give --api-key KEY (or set "
                             f"${API_KEY_VARIABLE}) so that nobody else can change users, or bind 127.0.0.1.")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_parser() -> CommandParser:
    return CommandParser("serve", (CheckpointArguments, ServeArguments), doc=__doc__, positional=("checkpoint",))


def main(checkpoint: CheckpointArguments, serve: ServeArguments) -> None:
    import uvicorn

    from ...serve import RewardService, create_app

    service = RewardService(checkpoint.checkpoint, serve.routers, max_length=serve.max_length,
                            cache_dir=serve.cache_dir, device=serve.device)
    app = create_app(service, api_key=serve.api_key, max_batch_tokens=serve.max_batch_tokens,
                     max_wait_ms=serve.max_wait_ms, max_queue_tokens=serve.max_queue_tokens, max_items=serve.max_items,
                     max_body_bytes=int(serve.max_body_mb * (1 << 20)),
                     user_from=None if serve.user_from == "none" else serve.user_from)
    print(f"Serving {service.name} ({service.model.config.num_experts} experts, {len(service.users)} users, "
          f"max_length {service.reward.max_length}) on http://{serve.host}:{serve.port}")
    signal.signal(signal.SIGTERM, drained)
    uvicorn.run(app, host=serve.host, port=serve.port, timeout_graceful_shutdown=30, log_level="info")


def drained(signum, frame) -> None:
    """uvicorn answers SIGTERM by draining the requests it holds, then raises the signal again: by then the server
    did what SIGTERM asks, so it exits 0 (a process manager reads a death by signal as a crash)."""
    raise SystemExit(0)
