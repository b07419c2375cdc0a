"""Coalescing concurrent requests into one backbone pass.

RL trainers send many small requests at once (OpenRLHF and verl send one sample a request). Scoring each alone runs
the backbone on batches of one; the `Coalescer` instead takes every request waiting (up to `max_batch_tokens`
tokens, waiting at most `max_wait_ms` for more after the first) into one batch, scores it in one pass on a worker
thread, and hands each request its own rows back. While a batch is scored, the next one gathers, so a busy server
waits for nobody. A queue holding more than `max_queue_tokens` refuses new work (the caller answers 503 with
Retry-After) instead of growing without bound.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import RequestError


@dataclass
class Job:
    """One request's rows: their encodings and users, and the future its handler awaits."""

    encodings: list
    users: list
    future: asyncio.Future
    tokens: int = field(init=False)

    def __post_init__(self):
        self.tokens = sum(len(encoding["input_ids"]) for encoding in self.encodings)


class Coalescer:
    """Scores jobs in coalesced batches with `score(encodings, users, routers)` (a blocking call, run on one worker
    thread) against the router set `routers()` returns when the batch starts. `coalesce=False` scores every request
    alone (the naive server `smoe bench serve` compares against)."""

    def __init__(self, score, routers, *, max_batch_tokens: int, max_wait_ms: float, max_queue_tokens: int,
                 coalesce: bool = True):
        self.score, self.routers = score, routers
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.max_queue_tokens, self.coalesce = max_queue_tokens, coalesce
        self.queue: asyncio.Queue = asyncio.Queue()
        self.queued_tokens = 0
        self.batches = 0  # batches scored, for /health and the benchmark
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smoe-score")
        self._carried: Job | None = None

    async def submit(self, encodings: list, users: list) -> dict:
        """This request's `rewards`, `routing_weights` and `expert_rewards` (lists, one row per encoding)."""
        job = Job(encodings, users, asyncio.get_running_loop().create_future())
        if self.queued_tokens + job.tokens > self.max_queue_tokens and self.queued_tokens:
            raise RequestError(503, "server", f"overloaded: {self.queued_tokens} tokens are waiting (at most "
                               f"{self.max_queue_tokens}); retry shortly.", retry_after=1)
        self.queued_tokens += job.tokens
        await self.queue.put(job)
        return await job.future

    async def run(self) -> None:
        """The batching loop (a task for the server's lifetime)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(loop)
            self.queued_tokens -= sum(job.tokens for job in batch)
            batch = [job for job in batch if not job.future.done()]  # a client that left is not scored
            if batch:
                await self._score(loop, batch)

    async def _next_batch(self, loop) -> list:
        first, self._carried = self._carried or await self.queue.get(), None
        batch, tokens = [first], first.tokens
        deadline = loop.time() + self.max_wait
        while self.coalesce:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                if loop.time() >= deadline:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except TimeoutError:
                    break
            if tokens + job.tokens > self.max_batch_tokens:
                self._carried = job  # first in the next batch
                break
            batch.append(job)
            tokens += job.tokens
        return batch

    async def _score(self, loop, batch: list) -> None:
        routers = self.routers()  # one user set for the whole batch
        scored = []
        for job in batch:
            unknown = sorted({user for user in job.users if user is not None and user not in routers})
            if unknown:  # removed after its request was accepted
                job.future.set_exception(RequestError(404, "user", f"unknown user {unknown[0]!r} (removed); known "
                                                      f"users: {sorted(routers)}."))
            else:
                scored.append(job)
        if not scored:
            return
        encodings = [encoding for job in scored for encoding in job.encodings]
        users = [user for job in scored for user in job.users]
        try:
            result = await loop.run_in_executor(self.worker, self.score, encodings, users, routers)
        except Exception as error:  # noqa: BLE001  (each waiting request gets the failure, the loop goes on)
            for job in scored:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        self.batches += 1
        columns = {name: values.float().cpu().tolist() for name, values in result.items()}
        start = 0
        for job in scored:
            rows = slice(start, start + len(job.encodings))
            start = rows.stop
            if not job.future.done():
                job.future.set_result({name: values[rows] for name, values in columns.items()})
