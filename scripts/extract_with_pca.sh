#!/usr/bin/env bash
# Learns the descriptor PCA on a set of images, then extracts their DELF features.
#
# Usage: scripts/extract_with_pca.sh MODEL.keras IMAGES_DIR OUTPUT_DIR [CONFIG.pbtxt]
#   MODEL.keras  DELF checkpoint (create_delf_model or the training tools)
#   IMAGES_DIR   folder of images
#   OUTPUT_DIR   gets pca/ (the learned PCA) and features/ (one .delf per image)
#   CONFIG       extraction config (default: configs/delf_config_example.pbtxt)
# Re-running resumes: images whose feature file exists are skipped.
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -lt 3 || $# -gt 4 ]] && usage
model=$1 images=$2 output=$3
config=${4:-"$(dirname "$0")/../configs/delf_config_example.pbtxt"}
[[ -f $model ]] || { echo "error: model not found: $model" >&2; usage; }
[[ -d $images ]] || { echo "error: images folder not found: $images" >&2; usage; }
[[ -f $config ]] || { echo "error: config not found: $config" >&2; usage; }

pca="$output/pca"
if [[ ! -f $pca/pca_variances.npy ]]; then
  python -m delf_ret.cli.learn_pca --config_path="$config" --config_override="model_path=$model" \
    --images_dir="$images" --output_dir="$pca"
fi
python -m delf_ret.cli.extract_features --config_path="$config" \
  --config_override="model_path=$model" \
  --config_override="delf_local_config.pca_parameters.mean_path=$pca/pca_mean.npy" \
  --config_override="delf_local_config.pca_parameters.projection_matrix_path=$pca/pca_projection.npy" \
  --config_override="delf_local_config.pca_parameters.pca_variances_path=$pca/pca_variances.npy" \
  --images_dir="$images" --output_dir="$output/features"
