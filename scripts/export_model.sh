#!/usr/bin/env bash
# Exports a trained DELF checkpoint as a SavedModel usable by the extraction tools.
#
# Usage: scripts/export_model.sh MODEL.keras OUTPUT_DIR
#   MODEL.keras  checkpoint, e.g. the attention stage's delf_model.keras
#   OUTPUT_DIR   SavedModel folder (set a config's model_path to it)
set -euo pipefail

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ne 2 ]] && usage
[[ -f $1 ]] || { echo "error: model not found: $1" >&2; usage; }
exec python -m delf_ret.cli.export_delf_model --model_path="$1" --output_dir="$2"
