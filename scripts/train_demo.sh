#!/usr/bin/env bash
# The miniature of the paper's claim, and the bundled demo models (models/motion-pretrained, models/motion).
#
#   bash scripts/train_demo.sh [WORK]        # WORK defaults to .cache/motion; about 35 minutes on 2 CPU cores
#
# 1. a synthetic data set whose 8 classes differ only by motion (scripts/make_synthetic.py);
# 2. self-supervised pre-training of the `mini` preset (0.5 M parameters) on 2400 unlabelled clips;
# 3. fine-tuning with 4, 8 and 48 labelled clips per class, from the pre-trained encoder and from scratch;
# 4. `vmae evaluate` of all six on 200 held-out clips; results.md gets the table the README quotes, and
#    docs/miniature.png the learning curves (`vmae probe` of every checkpoint; needs matplotlib: PLOT_PY);
# 5. the pre-trained encoder and the classifier fine-tuned from it on 48 clips per class are copied into
#    models/, and one held-out clip per class into examples/motion/ (what `make demo` classifies).
# Every step is seeded (data, order, augmentations, masks, init), but two runs on the same machine are not
# bit-identical: the 8-labels-per-class top-1 moved by 0.035 between two runs (README).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-.cache/motion}
VMAE=${VMAE:-.venv/bin/vmae}
PY=${PY:-.venv/bin/python}
DATA=$WORK/data
PT_STEPS=${PT_STEPS:-4000}
PLOT_PY=${PLOT_PY:-$PY}    # a Python with matplotlib, for docs/miniature.png

if [ ! -d "$DATA/val" ]; then
  "$PY" scripts/make_synthetic.py "$DATA" --unlabelled 300 --train 48 --val 25 --samples 1 --seed 0
fi
# the few-label splits: the first 4 and the first 8 clips of every class
for n in 4 8; do
  for dir in "$DATA"/train/*/; do
    label=$(basename "$dir")
    mkdir -p "$DATA/train$n/$label"
    for f in $(ls "$dir" | sort | head -$n); do ln -sf "$(realpath "$dir/$f")" "$DATA/train$n/$label/$f"; done
  done
done

# Pre-training: the small-data recipe (configs/pretrain/small-data.toml): the mini preset, tube masking 0.75
# (the paper's choice for small data sets), plain-pixel targets (per-patch normalisation would turn the smooth
# backgrounds into noise), 32 videos x 2 samples per step at a peak lr of 3e-3. Every checkpoint is kept
# (every 250 steps) for the probes below. Flips are harmless here (no labels); fine-tuning turns them off.
"$VMAE" pretrain "$DATA/unlabelled" --out "$WORK/pretrain" --config small-data --max-steps "$PT_STEPS" \
  --set run.preview_every=500 --set run.log_every=25 --set run.save_every=250 --set run.keep=0 --seed 0 \
  --resume --quiet

# The learning curve of the features: `vmae probe` (kNN and linear, frozen encoder) of every checkpoint,
# trained on the 8-label split and scored on the held-out clips.
mkdir -p "$WORK/probe"
for ckpt in "$WORK"/pretrain/checkpoints/step-*/; do
  name=$(basename "$ckpt")
  [ -s "$WORK/probe/$name.json" ] || "$VMAE" probe "$DATA/train8" --val "$DATA/val" --model "$ckpt" --json \
    --quiet > "$WORK/probe/$name.json" || rm -f "$WORK/probe/$name.json"
done

# Fine-tuning sees no held-out clip: without --val it keeps its last model, so no row of the table is chosen
# on the clips it is scored on.
finetune() {  # NAME INIT TRAIN EPOCHS
  "$VMAE" finetune "$DATA/$3" --model "$2" --out "$WORK/$1" --config small-data --no-flip \
    --epochs "$4" --seed 0 --resume --quiet
  "$VMAE" evaluate "$DATA/val" --model "$WORK/$1/model" --json --quiet > "$WORK/$1.eval.json"
}
# the few-label recipe (configs/finetune/small-data.toml), the same for both starts; 1200 steps each
finetune pretrained-4 "$WORK/pretrain/model" train4 300
finetune scratch-4 mini train4 300
finetune pretrained-8 "$WORK/pretrain/model" train8 150
finetune scratch-8 mini train8 150
finetune pretrained-48 "$WORK/pretrain/model" train 25
finetune scratch-48 mini train 25

"$PY" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
rows = ["| labelled clips per class | from scratch | after pre-training |", "|---|---|---|"]
for n in (4, 8, 48):
    acc = {k: json.loads((work / f"{k}-{n}.eval.json").read_text()) for k in ("scratch", "pretrained")}
    rows.append(f"| {n} | {acc['scratch']['top1']:.3f} | {acc['pretrained']['top1']:.3f} |")
(work / "results.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
if "$PLOT_PY" -c "import matplotlib" 2>/dev/null; then "$PLOT_PY" scripts/plot_demo.py "$WORK" --out docs/miniature.png; fi

rm -rf models/motion-pretrained models/motion
mkdir -p models examples/motion
cp -r "$WORK/pretrain/model" models/motion-pretrained
cp -r "$WORK/pretrained-48/model" models/motion
cp "$DATA"/samples/*.mp4 examples/motion/
