#!/usr/bin/env bash
# Leave-one-centre-out on glomeruli-pas: 3 inits x 4 stain options x 3 seeds, then the per-centre table of README
# (issue 10). Each stain option is applied alike in 02 (SimCLR) and 03 (fine-tune); the glom encoder of each held-out
# centre is pretrained WITHOUT that centre's images (`--exclude-centre`), so no fold sees its test centre at all.
# Re-running skips finished runs and resumes interrupted ones.
#   bash benchmarks/loco_stain.sh [OUT=runs/loco]        (SEEDS=0,1,2 by default; ~1 min per run on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
G=${GLOMLIB:-.venv/bin/glomlib}
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/loco}
SEEDS=${SEEDS:-0,1,2}
D="--data data/glomeruli-pas/manifest.csv --positive-label GS --backbone efficientnet_lite0 --image-size 64 --progress false"
FT="$D --epochs 5 --patience 2 --batch-size 32 --lr 0.001 --min-steps 0 --folds 3 --cv centre --final-model false --seeds $SEEDS"
SSL="$D --epochs 5 --final-probe false --knn-every 0"
# "--stain-normalize=" (none) is explicit: 02 and 03 default to macenko for glom / imagenet (decided by this table)
declare -A OPT=([none]="--stain-normalize=" [hed]="--stain-normalize= --stain-augment 0.05" [reinhard]="--stain-normalize reinhard" [macenko]="--stain-normalize macenko")
run() {  # run OUT_DIR DONE_FILE command...: skip when DONE_FILE exists, resume a half-made folder
  local dir=$1 done=$2; shift 2
  if [ -f "$dir/$done" ]; then echo "skip $dir (done)"; return; fi
  local resume=""; [ -d "$dir" ] && resume="--resume true"
  echo "+ $* --out $dir $resume"; "$@" --out "$dir" $resume
}
mkdir -p "$OUT"
for s in none hed reinhard macenko; do
  for c in SAS SESCAM VUHSK; do
    run "$OUT/ssl-$s-without-$c" encoder.safetensors $G ssl $SSL ${OPT[$s]} --exclude-centre $c
  done
  for init in glom imagenet scratch; do
    extra=""; [ $init = glom ] && extra="--ssl-checkpoint $OUT/ssl-$s-without-{centre}"
    run "$OUT/$init-$s" metrics.json $G finetune --init $init $FT ${OPT[$s]} $extra
  done
done
$PY benchmarks/loco_table.py "$OUT"
