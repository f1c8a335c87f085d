#!/usr/bin/env bash
# The short DAG of the GPU check: every stage kind of the default run (curate, embed, the evaluator,
# base, both experts, joint SFT, merge, the router, each method of t2i_edit and of realism, every
# evaluation, the routed teachers plain and guided, the report), with torch.compile on, one seed,
# a few steps each and a small world, JOBS stages at a time (tools/repro.py). It checks that the
# GPU path runs end to end and measures each stage's start-up and work, not any score.
#
#   bash benchmarks/gpu_dag.sh                 # JOBS=8, 2 CPU threads a stage (16 cores)
#   bash benchmarks/gpu_dag.sh --stages        # apply the overrides only and list the DAG's stages
#   bash benchmarks/gpu_dag.sh -S key=value    # extra overrides go last
#
# Like gpu_profile.sh it edits params.yaml (as `dvc exp run -S`); `git checkout params.yaml` undoes it.
set -euo pipefail
cd "$(dirname "$0")/.."
overrides=(
  compute.compile=true compute.threads=2
  data.train_per_bucket=256 data.test_per_bucket=48 data.shard_size=256
  train.checkpoint_every=1000 train.log_every=10 train.base.steps=40
  experts.edit.steps=20 experts.realism.steps=20 router.steps=50
  eval.count=48 eval.evaluator.parser_steps=100 eval.evaluator.clip_steps=50
  eval.evaluator.holdout=200 eval.evaluator.reference=500 eval.evaluator.min_scene_accuracy=0
  distill.steps=20 distill.batch_size=16 'settings.t2i_edit.seeds=[0]' 'settings.realism.seeds=[0]'
)
if [[ ${1:-} == --stages ]]; then
  python -c 'import sys; from dvc.utils.hydra import apply_overrides; apply_overrides("params.yaml", sys.argv[1:])' \
    "${overrides[@]}"
  python -m dvc stage list --name-only
  exit
fi
python tools/repro.py --jobs "${JOBS:-8}" "${overrides[@]/#/-S}" "$@"
