"""Data: tfds sources read through grain, tokenizers, packing and the training iterator."""
