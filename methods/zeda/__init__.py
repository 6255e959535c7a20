"""ZEDA, Zero-Expert Self-Distillation Adaptation (arXiv 2605.18643): a post-trained static MoE becomes a dynamic one.

- `inject`: zero-output experts in every MoE layer (router columns only; `modeling_zeda`, which is also the
  modeling code a ZEDA checkpoint carries, registered as the model variant `zeda` in methods/variants).
- `group_balance`: the group-level balancing loss that gives the zero experts their share of routed slots.
- `module`: the distillation module of one stage (routers only, or everything) with that loss and FLOPs logging.
- `stages`: the two-stage self-distillation from the frozen original model, and the run summary.
- `options`: the `zeda.*` config keys, joined into the schema at load (harness/config/sections.py).
Registered as the MoE adaptation `zeda` (methods/adaptations) and run by `slim adapt zeda`.
"""
