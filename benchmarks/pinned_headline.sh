#!/bin/bash
# The headline on a bigger machine standing in for 2-core ones: the default recipe on
# tiny-shakespeare, up to four runs at once (bf16 and fp32 precision, seeds 1337 and 2), each
# pinned to 2 CPUs on distinct cores, the GPU hidden; then eval.py scores each best/ over the
# whole validation split.
#   CORPUS=../shared/data/tinyshakespeare.txt BUDGET=10m OUT=outputs/pinned bash benchmarks/pinned_headline.sh
# Runs sharing a machine share its memory bandwidth and caches: compare them with each other,
# and with a run alone on a 2-core machine only as a lower bound.
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=
CORPUS=${CORPUS:-../shared/data/tinyshakespeare.txt}
BUDGET=${BUDGET:-10m}
OUT=${OUT:-outputs/pinned}
PY=${PY:-python}
RUNS=${RUNS:-/tmp/tinyllm-pinned}
mkdir -p "$OUT"
{ lscpu; grep -o 'amx[a-z_0-9]*\|avx512_bf16' /proc/cpuinfo | sort | uniq -c
  $PY -c "import torch; print('torch', torch.__version__)"; } > "$OUT/machine.txt" 2>&1
# the first hardware thread of each physical core
mapfile -t CPUS < <(lscpu -p=CPU,CORE,SOCKET | grep -v '^#' | sort -t, -k3,3n -k2,2n -k1,1n |
  awk -F, '!seen[$3","$2]++ {print $1}')
NAMES=(bf16_seed1337 bf16_seed2 fp32_seed1337 fp32_seed2)
declare -A ARGS=([bf16_seed1337]="seed=1337" [bf16_seed2]="seed=2"
  [fp32_seed1337]="seed=1337 trainer.precision=32-true" [fp32_seed2]="seed=2 trainer.precision=32-true")
n=$(( ${#CPUS[@]} / 2 )); (( n > ${#NAMES[@]} )) && n=${#NAMES[@]}
rm -rf "$RUNS"; mkdir -p "$RUNS"
for i in $(seq 0 $((n - 1))); do
  name=${NAMES[$i]}; pin="${CPUS[$((2 * i))]},${CPUS[$((2 * i + 1))]}"
  echo "$name on CPUs $pin: ${ARGS[$name]}" | tee -a "$OUT/machine.txt"
  ( export OMP_NUM_THREADS=2
    taskset -c "$pin" $PY train.py data.path="$CORPUS" training.time_budget="$BUDGET" \
      ${ARGS[$name]} hydra.run.dir="$RUNS/$name" > "$RUNS/$name.out" 2>&1
    echo "train exit $? at $SECONDS s" >> "$RUNS/$name.out"
    taskset -c "$pin" $PY eval.py "$RUNS/$name/best" --json > "$RUNS/$name.eval.json" 2>> "$RUNS/$name.out"
    echo "eval exit $? at $SECONDS s" >> "$RUNS/$name.out" ) &
done
wait
for name in "${NAMES[@]:0:$n}"; do
  echo "$name: $(grep -h 'planning\|extending' "$RUNS/$name/train.log" | sed 's/.*- //' | tr '\n' ' ')"
  $PY -c "import json,sys; print('  whole-split val loss', round(json.load(open(sys.argv[1]))['loss'], 4))" \
    "$RUNS/$name.eval.json"
done | tee "$OUT/summary.txt"
(cd "$RUNS" && tar czf - *.out *.eval.json */train.log */config.yaml */tensorboard) > "$OUT/runs.tgz"
echo "total: $SECONDS s"
