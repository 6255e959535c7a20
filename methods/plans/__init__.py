"""Built-in progressive plans, one module each; they register into slim.harness.progressive_plans."""
