"""The measuring tools every benchmark shares: what machine a record comes from, its matmul rate, peak memory, a
fresh process to measure in, and the pairs a speed benchmark runs on."""

import concurrent.futures
import multiprocessing
import platform
import resource
import threading
import time
from pathlib import Path

import torch

from ..data import generate_preference_set
from ..runtime import pick_device

# Trainer settings that keep evaluation, logging and progress bars out of a timed training run.
UNTIMED_WORK_OFF = {"eval_strategy": "no", "disable_tqdm": True, "logging_strategy": "no"}


def machine() -> str:
    """The device, processor, thread count and torch version a benchmark record was measured with."""
    device = pick_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    return f"{device.type} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """The rate of a square matmul on `device`: the ceiling a FLOP bound is computed against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    a @ a  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * 2 * size ** 3 / (time.perf_counter() - start)


def benchmark_pairs(num_pairs: int, seed: int):
    """The demo's generated set: always available offline, with realistic chat-template lengths."""
    pairs = generate_preference_set(seed=seed)
    return pairs.shuffle(seed=seed).select(range(min(num_pairs, len(pairs))))


class PeakMemory:
    """Samples this process's resident memory (/proc/self/status) every 50 ms: peak total (VmHWM, which counts
    memory-mapped file pages the kernel may drop at any time) and peak anonymous memory (RssAnon: what the process
    itself holds)."""

    def __enter__(self):
        self.anonymous, self._running = 0, True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self):
        while self._running:
            status = Path("/proc/self/status").read_text().split("\n")
            self.anonymous = max(self.anonymous, next((int(line.split()[1]) * 1024 for line in status
                                                       if line.startswith("RssAnon:")), 0))
            time.sleep(0.05)


def in_fresh_process(function, *args):
    """`function(*args)` in a newly spawned process, so its peak memory is its own."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()
