#!/usr/bin/env bash
# Both DELF training stages in order: tuning, then attention.
#
# Usage: scripts/run_train.sh DATA_DIR OUTPUT_DIR [NUM_DEVICES] [train_delf flags...]
#   DATA_DIR     TFRecord shards written by prepare_gldv2 or prepare_labelled_photos
#   OUTPUT_DIR   gets tuning/ and attention/ (attention/delf_model.keras is the model)
#   NUM_DEVICES  local devices to train on (default 1)
#   further flags go to train_delf for both stages
# Re-running resumes whichever stage was interrupted.
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -lt 2 ]] && usage
data=$1 output=$2
shift 2
devices=1
if [[ $# -gt 0 && $1 != -* ]]; then devices=$1; shift; fi
[[ -d $data ]] || { echo "error: data folder not found: $data" >&2; usage; }

here=$(dirname "$0")
bash "$here/train_tuning.sh" "$data" "$output/tuning" "$devices" "$@"
bash "$here/train_attention.sh" "$data" "$output/tuning" "$output/attention" "$devices" "$@"
