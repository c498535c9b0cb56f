"""Training data: GLDv2 preparation into TFRecord shards and the tf.data input pipeline."""
