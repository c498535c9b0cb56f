#!/usr/bin/env bash
# Learns the descriptor PCA after training: extracts raw features (no PCA) of a
# sample of images and writes the PCA files where the config's pca_parameters point.
#
# Usage: scripts/compute_pca.sh MODEL CONFIG.pbtxt IMAGES_DIR [SAMPLE_SIZE]
#   MODEL        .keras checkpoint or exported SavedModel folder
#   CONFIG       extraction config; PCA files go to the folder of its mean_path
#   IMAGES_DIR   folder of images to sample from
#   SAMPLE_SIZE  use at most this many images (default 1000)
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -lt 3 || $# -gt 4 ]] && usage
model=$1 config=$2 images=$3 sample=${4:-1000}
[[ -e $model ]] || { echo "error: model not found: $model" >&2; usage; }
[[ -f $config ]] || { echo "error: config not found: $config" >&2; usage; }
[[ -d $images ]] || { echo "error: images folder not found: $images" >&2; usage; }

pca_dir=$(python - "$config" <<'PY'
import pathlib, sys
from delf_ret.config import parse_config_text
path = pathlib.Path(sys.argv[1])
config = parse_config_text(path.read_text(), base_dir=path.parent)
mean = config.delf_local_config.pca_parameters.mean_path
if not mean:
    sys.exit("error: the config sets no delf_local_config.pca_parameters.mean_path")
print(pathlib.Path(mean).parent)
PY
)
exec python -m delf_ret.cli.learn_pca --config_path="$config" --config_override="model_path=$model" \
  --images_dir="$images" --output_dir="$pca_dir" --max_images="$sample"
