"""Built-in expert criteria, one module each; they register into slim.harness.compression.expert_criteria."""
