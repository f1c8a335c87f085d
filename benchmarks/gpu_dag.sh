#!/usr/bin/env bash
# The short DAG of the GPU check: every stage kind of the default run (curate, embed, the evaluator,
# base, both experts, joint SFT, merge, the router, each method of t2i_edit and of realism, every
# evaluation, the routed teachers plain and guided, the report), with torch.compile on, one seed,
# a few steps each and a small world, JOBS stages at a time (tools/repro.py). It checks that the
# GPU path runs end to end and measures each stage's start-up and work, not any score.
#
#   bash benchmarks/gpu_dag.sh              # JOBS=8, 2 CPU threads a stage (16 cores)
#   bash benchmarks/gpu_dag.sh --dry        # the stage list, nothing run (gpu_prepare.sh freezes it)
#
# Like gpu_profile.sh it edits params.yaml (as `dvc exp run -S`); `git checkout params.yaml` undoes it.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=()
[[ ${1:-} == --dry ]] && { dry=(--dry); shift; }
python tools/repro.py --jobs "${JOBS:-8}" "${dry[@]}" \
  -S compute.compile=true -S compute.threads=2 \
  -S data.train_per_bucket=256 -S data.test_per_bucket=48 -S data.shard_size=256 \
  -S train.checkpoint_every=1000 -S train.log_every=10 -S train.base.steps=40 \
  -S experts.edit.steps=20 -S experts.realism.steps=20 -S router.steps=50 \
  -S eval.count=48 -S eval.evaluator.parser_steps=100 -S eval.evaluator.clip_steps=50 \
  -S eval.evaluator.holdout=200 -S eval.evaluator.reference=500 -S eval.evaluator.min_scene_accuracy=0 \
  -S distill.steps=20 -S distill.batch_size=16 -S 'settings.t2i_edit.seeds=[0]' -S 'settings.realism.seeds=[0]' \
  "$@"
