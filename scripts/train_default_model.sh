#!/usr/bin/env bash
# Trains delf-ret's default model (delf_ret/default_model) in DELF's order, with
# self-supervised pretraining in place of ImageNet (configs/delf_default_model.pbtxt):
#   1. selfsup: local descriptors from the unlabelled photos of every training folder;
#   2. tuning: backbone + classifier on the landmark labels of DATA_DIR/train_landmarks,
#      from the selfsup backbone;  3. attention: DELF's attention classifier, same labels;
#   4. compact float16 export, PCA on every third photo of DATA_DIR/train, the matching
#      rule and min_inliers chosen on training pairs (scripts/calibrate_matching.py), the
#      figures on the landmark photos' validation split (validation.json).
#
# Usage: scripts/train_default_model.sh DATA_DIR OUTPUT_DIR [--selfsup_model=FILE]
#            [--holdout_labels=N] [--no_tuning] [--config_override=FIELD=VALUE ...]
#   DATA_DIR   the training folders: train/ (needed), train_sequences/, train_objects/,
#              train_landmarks/ (needed; labels.csv: image,landmark,...), e.g. ../shared/data
#   OUTPUT_DIR selfsup/, shards/, tuning/, attention/: each stage's checkpoints and logs;
#              default_model/: the files of delf_ret/default_model
#   --selfsup_model=FILE  skip stage 1: tuning starts from this DELF model's backbone
#   --holdout_labels=N    N whole landmarks go to validation only (figures on unseen ones)
#   --no_tuning           skip stage 2: attention on the selfsup backbone, left unchanged
#   extra flags go to every train_delf stage
# Run it again after an interruption: every stage resumes where it stopped.
# To ship the result, copy OUTPUT_DIR/default_model/* into delf_ret/default_model/.
set -euo pipefail

usage() { sed -n '11,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -lt 2 ]] && usage
data=$1 out=$2
shift 2
selfsup_model="" given_selfsup="" holdout=0 tuning=yes
while [[ $# -gt 0 ]]; do
  case $1 in
    --selfsup_model=*) selfsup_model=${1#*=} given_selfsup=${1#*=} ;;
    --holdout_labels=*) holdout=${1#*=} ;;
    --no_tuning) tuning=no ;;
    *) break ;;
  esac
  shift
done
if [[ -n $selfsup_model && ! -f $selfsup_model ]]; then
  echo "error: selfsup model not found: $selfsup_model" >&2
  usage
fi
[[ $holdout =~ ^[0-9]+$ ]] || { echo "error: --holdout_labels must be a count: $holdout" >&2; usage; }
for folder in train train_landmarks; do
  [[ -d $data/$folder ]] || { echo "error: photo folder not found: $data/$folder" >&2; usage; }
done
repo=$(cd "$(dirname "$0")/.." && pwd)
config=$repo/configs/delf_default_model.pbtxt
mkdir -p "$out/default_model"
start=$(date +%s)

# One stage of train_delf: progress lines on the terminal, everything in its train.log.
stage() {
  local name=$1
  shift
  mkdir -p "$out/$name"
  set +o pipefail
  python -m delf_ret.cli.train_delf --stage="$name" --output_dir="$out/$name" \
    --config_path="$config" "$@" 2>&1 | tee -a "$out/$name/train.log" \
    | grep --line-buffered -E "^(selfsup|tuning|attention|resumed|initialised|done|error|real pairs|[0-9]+ training)"
  local status=${PIPESTATUS[0]}
  set -o pipefail
  if [[ $status -ne 0 ]]; then
    tail -n 20 "$out/$name/train.log" >&2
    echo "error: the $name stage failed with status $status (log: $out/$name/train.log)" >&2
    exit "$status"
  fi
}

if [[ -z $selfsup_model ]]; then
  python -m delf_ret.train.recipe selfsup-photos "$data" "$out/selfsup_photos.txt"
  stage selfsup --photos="$out/selfsup_photos.txt" "$@"
  selfsup_model=$out/selfsup/delf_model.keras
fi
python -m delf_ret.cli.prepare_labelled_photos --labels_csv="$data/train_landmarks/labels.csv" \
  --label_column=landmark --holdout_labels="$holdout" --output_dir="$out/shards" \
  | grep -E "^(done|error|[0-9]+ images)"
if [[ $tuning == yes ]]; then
  stage tuning --data_dir="$out/shards" --config_override=backbone_weights="$selfsup_model" "$@"
  stage attention --data_dir="$out/shards" --init_from="$out/tuning" "$@"
else
  stage attention --data_dir="$out/shards" --config_override=backbone_weights="$selfsup_model" "$@"
fi
python -m delf_ret.cli.export_delf_model --model_path="$out/attention/delf_model.keras" \
  --compact_path="$out/default_model/delf_default.npz"
python -m delf_ret.train.recipe pca-photos "$out/default_model" "$data/train"
python -m delf_ret.cli.learn_pca --config_path="$out/default_model/delf_config.pbtxt" \
  --config_override=delf_local_config.use_pca=false --list_images_path="$out/pca_photos.txt" \
  --output_dir="$out/default_model" | grep -v "^\["
folders=()
for folder in train train_sequences train_landmarks train_objects; do
  [[ -d $data/$folder ]] && folders+=("$data/$folder")
done
python "$repo/scripts/calibrate_matching.py" "$out/default_model/delf_config.pbtxt" "${folders[@]}" \
  2>&1 | grep -E "^(distance|ratio|best|wrote)"
python -m delf_ret.train.recipe validate "$out/default_model/delf_config.pbtxt" "$out/shards" \
  --output "$out/validation.json" 2> >(grep -E "^(validation|error)" >&2)
python -m delf_ret.train.recipe facts "$out" "$(( $(date +%s) - start ))" "$data" \
  ${given_selfsup:+--selfsup_model="$given_selfsup"}
echo "done: default model in $out/default_model ($(( $(date +%s) - start )) s)"
