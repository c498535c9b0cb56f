"""The command-line tools: one module per console script, named like it.

``python -m delf_ret.cli.<tool>`` runs the same tool as the console script
``<tool>``: extract_features, match_images, build_index, perform_retrieval,
query_index, learn_pca, create_delf_model, export_delf_model,
download_dataset, prepare_gldv2, prepare_labelled_photos, train_delf,
delf_demo. What they share is in delf_ret.cli.common; the work itself is
library code in the stage folders.
"""

import os

# OpenMP threads (faiss) wait passively: spinning waiters made faiss searches and training up
# to 20x slower when the cores are shared (benchmarks/index_scale.py). Read when faiss loads,
# so set here, before any tool imports it; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
