"""Experiment tracking of training runs (Weights & Biases)."""
