"""Data: one reader, datasets and adapters, splits, joint augmentation, synthetic data."""
