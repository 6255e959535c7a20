"""Built-in expert similarities, one module each; they register into slim.harness.compression.expert_similarities."""
