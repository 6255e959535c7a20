"""Built-in model variants, one module each; they register into slim.harness.models.variants."""
