#!/bin/bash
# The `steps` stage of benchmarks/recipe.py on one GPU: every candidate, for each seed, trains at
# once (they are small; a GPU runs them side by side), then eval.py scores each best/ over the
# whole validation split and a table is printed. Losses at fixed steps do not depend on the speed
# of the machine, so this screens on a GPU what a 2-core CPU would need hours for.
#   CORPUS=../shared/data/tinyshakespeare.txt SEEDS="1337 2" bash benchmarks/step_screen.sh
# NAMES picks candidates (default: all); EXTRA adds Hydra overrides to every run.
export PYTHONUNBUFFERED=1
CORPUS=${CORPUS:-../shared/data/tinyshakespeare.txt}
SEEDS=${SEEDS:-1337 2}
OUT=${OUT:-outputs/bench/steps}
PY=${PY:-python}
NAMES=${NAMES:-$($PY -c "from benchmarks.recipe import STEPS; print(*STEPS)")}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for name in $NAMES; do
    $PY -m benchmarks.recipe --corpus "$CORPUS" --stage steps --only "$name" \
      --out "$OUT/seed$seed" seed="$seed" training.num_threads=1 $EXTRA > "$OUT/$name.seed$seed.log" 2>&1 &
  done
done
wait
$PY -m benchmarks.recipe --table "$OUT"
