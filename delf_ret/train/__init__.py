"""Training: GLDv2 (clean) into TFRecord shards, the tf.data pipeline, the tfds builder,
and the two-stage loop (tuning: backbone + classifier, then attention)."""
