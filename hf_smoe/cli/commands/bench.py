"""Speed benchmarks, each a ratio against a baseline in the same run.

embed: cache tokens/s vs a one-text-at-a-time loop and vs the FLOP bound. train: training on cached features vs
re-running the frozen backbone every step, at equal final accuracy. users: 1 vs 100 users from one pass. judge: the
local judge of `smoe interpret`, one prompt at a time in fp32 vs batched with shared prompt beginnings, fp32 and
bf16 (--backbone names the judge as --generator does: a causal LM, a .gguf file, qwen2.5-coder-1.5b-instruct; left
out, every offline judge installed, SmolLM2 and, with hf-smoe[describer], the 1.5B model, in one run).
tune: tuning the top layers from cached hidden states vs re-running the lower layers every step vs tuning every
layer. serve: the reward server's requests/s, tokens/s and p50/p99 latency at 1, 16 and 64 inputs per request and
concurrency 1, 8 and 32, coalescing vs one backbone pass per request, and 100 distinct users vs one; with --faults,
`smoe serve` under --clients clients for --seconds with a share of bad requests (malformed JSON, wrong types, unknown
users, oversize bodies, too many texts) and clients that leave mid-request: requests served, errors by status, the
good requests' p99 latency, crashes, and good rewards that differ from smoe_reward (written as
bench_serve_faults.json). scale: one training epoch and an evaluation on synthetic features of --pairs pairs, peak
memory and pairs/s, vs every vector in RAM.
"""

from dataclasses import dataclass, field
from typing import Literal

from ...errors import InputError
from ..arguments import AT_LEAST_ONE, POSITIVE, SEED, BackboneArguments
from ..parsing import CommandParser
from ..printing import print_values


@dataclass
class BenchArguments:
    what: Literal["embed", "train", "users", "judge", "tune", "scale", "serve"] = field(metadata={
        "help": "the benchmark to run"})
    num_texts: int = field(default=64, metadata={"help": "embed: texts to encode"})
    num_pairs: int = field(default=192, metadata={
        "help": "train: pairs (75%% train, 25%% held out); tune: pairs (80/10/10)"})
    layers: int = field(default=2, metadata={"help": "tune: top layers tuned"})
    epochs: float = field(default=1.0, metadata={"help": "tune: epochs timed"})
    num_users: int = field(default=100, metadata={"help": "users: routers scored from one pass; serve: distinct "
                                                                    "users"})
    texts_per_run: int = field(default=128, metadata={"help": "serve: texts sent per load setting"})
    faults: bool = field(default=False, metadata={
        "help": "serve: the server under bad requests and clients that leave, instead of the load sweep"})
    clients: int = field(default=16, metadata={"help": "serve --faults: concurrent clients"})
    seconds: float = field(default=60.0, metadata={"help": "serve --faults: how long the clients send"})
    num_prompts: int = field(default=64, metadata={"help": "judge: Fig. 5 prompts to judge"})
    pairs: list[int] = field(default_factory=lambda: [10_000, 100_000], metadata={
        "help": "scale: pair counts to run (90%% train, 10%% test)"})
    hidden: int = field(default=3072, metadata={"help": "scale: feature width (3B backbone: 3072)"})
    in_memory_max_pairs: int = field(default=10_000, metadata={
        "help": "scale: run the all-in-RAM baseline up to this many pairs"})
    scratch_dir: str | None = field(default=None, metadata={
        "help": "scale: where the synthetic features go (deleted after)"})
    output_dir: str = field(default="outputs/bench", metadata={"help": "where bench_WHAT.json is written"})
    seed: int = field(default=0, metadata={"help": "seed of the generated data and models"})

    def __post_init__(self):
        AT_LEAST_ONE.check(self, "num_texts", "num_pairs", "layers", "num_users", "num_prompts", "pairs", "hidden",
                           "texts_per_run", "clients")
        POSITIVE.check(self, "seconds")
        SEED.check(self, "seed")
        if self.faults and self.what != "serve":
            raise InputError(f"--faults: only `smoe bench serve` takes it, not `smoe bench {self.what}`.")

    @property
    def benchmark(self) -> str:
        """The benchmark run: `what`, or the server under faults."""
        return "serve_faults" if self.faults else self.what

    def options(self) -> dict:
        """The keyword arguments of benchmark `what`."""
        return {"embed": {"num_texts": self.num_texts}, "train": {"num_pairs": self.num_pairs},
                "users": {"num_users": self.num_users}, "judge": {"num_prompts": self.num_prompts},
                "tune": {"num_pairs": self.num_pairs, "layers": self.layers, "epochs": self.epochs},
                "scale": {"num_pairs": self.pairs, "hidden": self.hidden, "scratch_dir": self.scratch_dir,
                          "in_memory_max_pairs": self.in_memory_max_pairs},
                "serve": {"num_users": self.num_users, "texts_per_run": self.texts_per_run},
                "serve_faults": {"clients": self.clients, "seconds": self.seconds}}[self.benchmark]


def make_parser() -> CommandParser:
    return CommandParser("bench", (BenchArguments, BackboneArguments), doc=__doc__, positional=("what",))


def main(bench: BenchArguments, backbone: BackboneArguments) -> None:
    from ...bench import run_bench

    record = run_bench(bench.benchmark, backbone.backbone, bench.output_dir, seed=bench.seed, **bench.options())
    print(f"{record['benchmark']} benchmark on {record['machine']}")
    print_values(record["results"], "{:,.4g}")
