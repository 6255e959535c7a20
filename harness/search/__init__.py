"""`slim search`: Optuna studies over declared config spaces, pruned through Lightning, on shared storage."""
