"""In-place structural edits of a transformers MoE causal LM; the result stays a valid transformers model
whose config matches its weights (it reloads with `slim.harness.models.io.load_pretrained`). Every edit also
works on the meta device, so students can be planned without weights (`slim.harness.compression.shapes`).

- `drop_layers`: depth (SlimQwen eq 4)
- `shrink_hidden`: width (eq 5)
- `reduce_experts` / `resize_experts`: experts (eqs 6-8)
"""

from slim.harness.compression.depth import drop_layers
from slim.harness.compression.experts import reduce_experts, resize_experts
from slim.harness.compression.width import shrink_hidden

__all__ = ["drop_layers", "reduce_experts", "resize_experts", "shrink_hidden"]
