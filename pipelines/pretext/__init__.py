"""Pretext sampling: temporal labels, augmentation, clip cutting and the training stream."""
