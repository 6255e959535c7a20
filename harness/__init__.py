"""SlimQwen harness: calibrate, compress and distill Mixture-of-Experts language models."""
