"""DELF feature extraction: image pyramid, attention selection, keypoints, PCA.

Import the modules by their full path (``from delf_ret.extract.extractor import
DelfExtractor``). This package face imports nothing, so that the light modules
(geometry, selection, pca, settings) load without TensorFlow; extractor, inference,
saved_model, batch and pca_training need it.
"""
