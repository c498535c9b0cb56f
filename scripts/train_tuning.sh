#!/usr/bin/env bash
# Stage 1 of DELF training: tunes the backbone + classifier on prepared GLDv2 shards.
#
# Usage: scripts/train_tuning.sh DATA_DIR OUTPUT_DIR [NUM_DEVICES] [train_delf flags...]
#   DATA_DIR     TFRecord shards written by prepare_gldv2 or prepare_labelled_photos
#   OUTPUT_DIR   gets checkpoints/, tensorboard/ and delf_model.keras
#   NUM_DEVICES  local devices to train on (default 1; more: MirroredStrategy)
#   further flags go to train_delf, e.g. --config_path=configs/delf_train.pbtxt
# Re-running the same command resumes from the last checkpoint.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -lt 2 ]] && usage
data=$1 output=$2
shift 2
devices=1
if [[ $# -gt 0 && $1 != -* ]]; then devices=$1; shift; fi
[[ -d $data ]] || { echo "error: data folder not found: $data" >&2; usage; }
[[ $devices =~ ^[1-9][0-9]*$ ]] || { echo "error: NUM_DEVICES must be a positive integer" >&2; usage; }

strategy=default
[[ $devices -gt 1 ]] && strategy=mirrored
exec python -m delf_ret.cli.train_delf --stage=tuning --data_dir="$data" --output_dir="$output" \
  --strategy="$strategy" --num_devices="$devices" "$@"
