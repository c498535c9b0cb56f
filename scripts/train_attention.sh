#!/usr/bin/env bash
# Stage 2 of DELF training: trains the attention head on a frozen tuned backbone.
#
# Usage: scripts/train_attention.sh DATA_DIR TUNING_DIR OUTPUT_DIR [NUM_DEVICES] [train_delf flags...]
#   DATA_DIR     TFRecord shards written by prepare_gldv2 or prepare_labelled_photos
#   TUNING_DIR   output folder of scripts/train_tuning.sh (its last checkpoint is loaded)
#   OUTPUT_DIR   gets checkpoints/, tensorboard/ and delf_model.keras (the DELF model)
#   NUM_DEVICES  local devices to train on (default 1; more: MirroredStrategy)
#   further flags go to train_delf, e.g. --config_path=configs/delf_train.pbtxt
# Re-running the same command resumes from the last checkpoint.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -lt 3 ]] && usage
data=$1 tuning=$2 output=$3
shift 3
devices=1
if [[ $# -gt 0 && $1 != -* ]]; then devices=$1; shift; fi
[[ -d $data ]] || { echo "error: data folder not found: $data" >&2; usage; }
[[ -d $tuning/checkpoints ]] || { echo "error: no tuning checkpoints in $tuning" >&2; usage; }
[[ $devices =~ ^[1-9][0-9]*$ ]] || { echo "error: NUM_DEVICES must be a positive integer" >&2; usage; }

strategy=default
[[ $devices -gt 1 ]] && strategy=mirrored
exec python -m delf_ret.cli.train_delf --stage=attention --data_dir="$data" --output_dir="$output" \
  --init_from="$tuning" --strategy="$strategy" --num_devices="$devices" "$@"
