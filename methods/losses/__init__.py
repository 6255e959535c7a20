"""Built-in loss mixes, one module each; they register into slim.harness.training.loss_mixes."""
