#!/usr/bin/env bash
# The GPU profile of the whole study: on one H100/H200, every setting of the paper with every
# method and 3 seeds, all four experts, both baselines, every routed teacher, 960 test prompts per
# bucket, then the report, N stages at a time on the one card (tools/repro.py; `dvc repro` would
# run them one by one and leave the card idle most of the time).
#
#   bash benchmarks/gpu_profile.sh                 # JOBS=8 stages at once, 2 CPU threads each
#   bash benchmarks/gpu_profile.sh -S eval.steps=8 # extra overrides go last
#
# It edits params.yaml (as `dvc exp run -S` does in the workspace): `git checkout params.yaml`
# restores the default. Sources at batch 256 (4x the CPU default): the base sees 512k samples,
# where the H100 teacher curve (benchmarks/results/h100) flattens; experts 256-384k.
set -euo pipefail
cd "$(dirname "$0")/.."
python tools/repro.py --jobs "${JOBS:-8}" \
  -S compute.compile=true -S compute.threads=2 \
  -S data.test_per_bucket=960 -S eval.count=960 \
  -S train.batch_size=256 -S train.checkpoint_every=1000 -S train.base.steps=2000 \
  -S experts.local_edit.steps=1000 -S experts.global_edit.steps=1000 -S experts.edit.steps=1500 \
  -S experts.realism.steps=400 \
  -S distill.batch_size=64 -S distill.steps=300 -S distill.methods.diffusionopd.steps=75 \
  -S 'run.experts=[edit,realism,local_edit,global_edit]' -S 'run.baselines=[t2i_edit,local_global]' \
  -S 'run.teachers=[t2i_edit,local_global,diagnostic]' \
  -S 'settings.local_global.methods=[danceopd,diffusionopd,offpolicy]' \
  -S 'settings.diagnostic.methods=[danceopd,soft,per_sample,query_mid,query_high,k4]' \
  -S 'settings.t2i_edit.seeds=[0,1,2]' -S 'settings.local_global.seeds=[0,1,2]' \
  -S 'settings.diagnostic.seeds=[0,1,2]' -S 'settings.realism.seeds=[0,1,2]' \
  "$@"
