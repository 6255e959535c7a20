"""Built-in expert reducers, one module each; they register into slim.harness.compression.expert_reducers."""
