"""`smoe bench`: the package's speed and scale claims, each measured as a ratio against a baseline run in the same
process on the same machine, and written as a JSON record with the command and the machine. `speed` holds the
benchmarks of embedding, training, scoring many users, judging and backbone tuning; `scale` the feature store at the
paper's scale; `serving` the reward server under load; `measuring` the tools they share (the machine's description,
the matmul rate, peak memory, a fresh process)."""

from .benchmarks import BENCHMARKS, run_bench
from .scale import bench_scale
from .serving import bench_serve
from .speed import bench_embed, bench_judge, bench_train, bench_tune, bench_users

__all__ = ["BENCHMARKS", "bench_embed", "bench_judge", "bench_scale", "bench_serve", "bench_train", "bench_tune",
           "bench_users", "run_bench"]
