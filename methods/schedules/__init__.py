"""Built-in weight schedules, one module each; they register into slim.harness.training.weight_schedules."""
