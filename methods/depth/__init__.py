"""Built-in depth selectors, one module each; they register into slim.harness.compression.depth_selectors."""
