"""SlimQwen harness: calibrate, compress and distill Mixture-of-Experts language models."""

# Bump when a change to the harness alters what an unchanged config computes (a new default, a fixed bug in
# training, compression or evaluation). Grid cell keys hash it, so cells stored before the bump show as stale
# and are run again instead of being reused.
RESULTS_VERSION = 2
