"""Built-in MoE adaptations, one module each; they register into slim.harness.adaptations."""
