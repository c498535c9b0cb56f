"""Training: shards of GLDv2 or of labelled photos, the tf.data pipeline, the tfds builder,
one resumable loop (loop.py) for the tuning and attention stages and the self-supervised stage.

Import modules by full path: some load TensorFlow, some (photos, views, real pairs, recipe)
do not (CONTRIBUTING.md, imports).
"""
