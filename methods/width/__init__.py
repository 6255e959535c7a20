"""Built-in width selectors, one module each; they register into slim.harness.compression.width_selectors."""
