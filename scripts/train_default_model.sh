#!/usr/bin/env bash
# Retrains delf-ret's shipped default model (delf_ret/default_model) from unlabelled
# photos: the self-supervised stage, compact float16 export, PCA on every third photo,
# the putative-matching rule chosen on training pairs (scripts/calibrate_matching.py).
#
# Usage: scripts/train_default_model.sh TRAIN_DIR OUTPUT_DIR [--config_override=FIELD=VALUE ...]
#   TRAIN_DIR   photos (searched recursively), e.g. ../shared/data/train
#   OUTPUT_DIR  OUTPUT_DIR/selfsup: checkpoints, TensorBoard logs, train.log;
#               OUTPUT_DIR/default_model: the files of delf_ret/default_model
#   extra flags go to train_delf (recipe: configs/delf_default_model.pbtxt)
# Run it again after an interruption: training resumes at the last checkpoint.
# To ship the result, copy OUTPUT_DIR/default_model/* into delf_ret/default_model/.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -lt 2 ]] && usage
train_dir=$1 out=$2
shift 2
[[ -d $train_dir ]] || { echo "error: photo folder not found: $train_dir" >&2; usage; }
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/selfsup" "$out/default_model"

start=$(date +%s)
log=$out/selfsup/train.log
# Progress lines on the terminal, everything (TensorFlow's messages too) in the log.
set +o pipefail
python -m delf_ret.cli.train_delf --stage=selfsup --photos="$train_dir" \
  --output_dir="$out/selfsup" --config_path="$repo/configs/delf_default_model.pbtxt" "$@" 2>&1 \
  | tee -a "$log" | grep --line-buffered -E "^(selfsup|resumed|done|error|real pairs|[0-9]+ training)"
status=${PIPESTATUS[0]}
set -o pipefail
if [[ $status -ne 0 ]]; then
  tail -n 20 "$log" >&2
  echo "error: training failed with status $status (log: $log)" >&2
  exit "$status"
fi
python -m delf_ret.cli.export_delf_model --model_path="$out/selfsup/delf_model.keras" \
  --compact_path="$out/default_model/delf_default.npz"
python -m delf_ret.train.recipe pca-photos "$out/default_model" "$train_dir"
python -m delf_ret.cli.learn_pca --config_path="$out/default_model/delf_config.pbtxt" \
  --config_override=delf_local_config.use_pca=false --list_images_path="$out/pca_photos.txt" \
  --output_dir="$out/default_model" | grep -v "^\["
python "$repo/scripts/calibrate_matching.py" "$out/default_model/delf_config.pbtxt" "$train_dir" \
  2>&1 | grep -E "^(distance|ratio|best|wrote)"
python -m delf_ret.train.recipe facts "$out" "$(( $(date +%s) - start ))" "$train_dir"
echo "done: default model in $out/default_model ($(( $(date +%s) - start )) s)"
