"""The command-line tools: one module per console script, named like it.

``python -m delf_ret.cli.<tool>`` runs the same tool as the console script
``<tool>``: extract_features, match_images, build_index, perform_retrieval,
query_index, learn_pca, create_delf_model, export_delf_model,
download_dataset, prepare_gldv2, train_delf, delf_demo. What they share is in
delf_ret.cli.common; the work itself is library code in the stage folders.
"""
