#!/usr/bin/env bash
# The GPU check: embedding throughput and FLOP-bound fraction on CUDA (bf16 weights, 16K-token batches,
# page-locked transfers) and the feature-store scale benchmark, in one run on a lent GPU machine (`device` tool).
#
#   bash scripts/gpu_check.sh prepare   # here: wheels the device image lacks or has too old, into .whl/ (ignored)
#   bash scripts/gpu_check.sh run       # there, in one call: device.run(command="bash scripts/gpu_check.sh run",
#                                       #   carry=[".whl"], timeout_s=540); records come back under $OUT
#
# The device image has CUDA torch but not datasets, evaluate or this project's huggingface_hub/transformers
# versions; nothing can be fetched there. The backbone is random-initialised at SmolLM2-135M's shape (its GGUF
# wheel is too large to carry): throughput does not depend on the weights' values.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "prepare" ]]; then
    rm -rf .whl && mkdir -p .whl
    # pyarrow (53 MB) would leave no room in the 64 MiB a call carries: the image's own must be >= 24 (datasets 5)
    packages=(transformers huggingface_hub httpx2 httpcore2 truststore datasets dill multiprocess evaluate click h11)
    pins=$(python - "${packages[@]}" <<'PY'
import importlib.metadata as metadata, sys
print(" ".join(f"{name}=={metadata.version(name)}" for name in sys.argv[1:]))
PY
)
    # shellcheck disable=SC2086
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $pins
    python -m pip wheel -q --no-deps -w .whl .
    du -sh .whl
    exit 0
fi

[[ "${1:-}" == "run" ]] || { echo "usage: bash scripts/gpu_check.sh prepare|run" >&2; exit 2; }
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_SMOE_CACHE=/tmp/cache
python3 -c "import pyarrow; assert int(pyarrow.__version__.split('.')[0]) >= 24, pyarrow.__version__"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY'
from transformers import LlamaConfig, LlamaModel

from hf_smoe.testing import word_tokenizer

# SmolLM2-135M-Instruct's shape (30 layers, width 576, 9 heads / 3 KV heads, MLP 1536); a word tokenizer splits the
# benchmark texts into about as many tokens as SmolLM2's would (unknown words are one token each)
tokenizer = word_tokenizer("chatml")
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192)
LlamaModel(config).save_pretrained("/tmp/smollm2-shape")
tokenizer.save_pretrained("/tmp/smollm2-shape")
PY
python3 -m hf_smoe.cli bench embed --backbone /tmp/smollm2-shape --num-texts 2048 --output-dir "$OUT" 2>&1 \
    | tee "$OUT/embed.log"
# 700K pairs would not fit in one device call (10 min at most): SCALE_PAIRS sets the sizes
python3 -m hf_smoe.cli bench scale --pairs ${SCALE_PAIRS:-10000 100000} --hidden 3072 --in-memory-max-pairs 100000 \
    --scratch-dir /tmp/scale --output-dir "$OUT" 2>&1 | grep -v train_runtime | tee "$OUT/scale.log"
