"""Inference: the predictor and its backends, sliding windows, post-processing, predict, evaluate and export."""
