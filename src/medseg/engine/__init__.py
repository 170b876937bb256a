"""The engine: training, prediction, evaluation, checkpoints."""
