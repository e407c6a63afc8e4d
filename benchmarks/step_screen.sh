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
$PY - "$OUT" $SEEDS <<'PY'
import json, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2:]
rows = {}
for seed in seeds:
    for scored in sorted((out / f"seed{seed}" / "steps").glob("*/*/eval.json")):
        rows.setdefault(scored.parent.parent.name, {})[seed] = json.loads(scored.read_text())["loss"]
control = rows.get("control", {})
print("| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | against control |")
print("|---|" + "---|" * (len(seeds) + 2))
for name, losses in rows.items():
    mean = sum(losses.values()) / len(losses)
    paired = [losses[s] - control[s] for s in seeds if s in losses and s in control]
    delta = f"{sum(paired) / len(paired):+.4f}" if paired else ""
    cells = " | ".join(f"{losses[s]:.4f}" if s in losses else "-" for s in seeds)
    print(f"| {name} | {cells} | {mean:.4f} | {delta} |")
PY
