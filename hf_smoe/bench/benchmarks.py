"""`smoe bench WHAT`: runs one benchmark and writes its record beside the command and the machine it ran on."""

import json
from pathlib import Path

from ..errors import InputError
from ..runtime import run_command, write_text_atomic
from .measuring import machine
from .scale import bench_scale
from .serving import bench_serve, bench_serve_faults
from .speed import bench_embed, bench_judge, bench_train, bench_tune, bench_users

BENCHMARKS = {"embed": bench_embed, "train": bench_train, "users": bench_users, "judge": bench_judge,
              "tune": bench_tune, "scale": bench_scale, "serve": bench_serve, "serve_faults": bench_serve_faults}


def run_bench(what: str, backbone: str, output_dir: str, **options) -> dict:
    """Runs benchmark `what` and writes its record to `output_dir/bench_{what}.json` (a rerun refreshes it)."""
    output = Path(output_dir).expanduser()
    if output.exists() and not output.is_dir():
        raise InputError(f"--output-dir: {output} is a file; give a folder for the benchmark records.")
    results = BENCHMARKS[what](backbone, **options)
    record = {"command": run_command(), "benchmark": what, "options": options, "backbone": backbone,
              "machine": machine(), "results": results}
    write_text_atomic(output / f"bench_{what}.json", json.dumps(record, indent=2))
    return record
