"""`slim plan`: the per-GPU memory of a distillation run and whether it fits N GPUs of M GiB.

Shapes come from meta-device models (nothing is allocated): the teacher is `model`, the student is `model` cut by
the `compress` recipe (slim.harness.compression.shapes), each with its MTP module of depth D. Under train.strategy=fsdp
every model is sharded over all W = plan.gpus x plan.nodes GPUs (otherwise W = 1 below and nothing is all-gathered).
With P parameters (MTP included) and c bytes per compute element (2 under train.precision=bf16-mixed, 4 under
32-true), bytes per GPU:

    student parameters   4 P_s / W   fp32 shards; under bf16-mixed these are the master weights AdamW updates
    student gradients    4 P_s / W   fp32 shards (FSDP reduce-scatters in fp32)
    optimizer states     8 P_s / W   AdamW m and v, fp32
    frozen teacher       c P_t / W   (bf16 under bf16-mixed)
    all-gathered         c (R_s + R_t + 2 U)   each model's root unit R (embedding, LM head, final norm, MTP norms and
                         projection) stays gathered through the step; U, the largest decoder-layer unit of either
                         model, is gathered once for compute and once more for the prefetched next layer
    activations          b s c A   for a micro-batch of b sequences of s tokens, A elements per token:
                         without checkpointing A = sum of a(layer) over the student's layers and MTP depths;
                         with it (train.activation_checkpointing) A = d (L + D) + max a(layer): each layer keeps
                         only its input, and one layer's activations are rebuilt at a time in backward
    teacher forward      b s c (max a_t(layer) + d_t (1 + D))   the frozen teacher keeps no graph: one layer's working
                         set at a time, plus the final-normed hidden states of its backbone and MTP depths, which the
                         KD heads read
    loss heads           h c (N + V) d + 4 V d + 12 r V   for h heads with a loss term (the backbone's with `lm`
                         or `kd`, one per MTP depth with `mtp_lm` or `mtp_kd`) under the fused chunked head
                         (distill.kd_kernel chunked or triton): each head's forward leaves its input and weight
                         gradients ([N, d], [V, d] in the compute dtype) for backward; one head at a time accumulates
                         its weight gradient in fp32 and holds three fp32 [r, V] chunk buffers (student and teacher
                         logits, their gradient), r rows per chunk (kernels/kd_loss/chunked.py's default, at most
                         N = b s). Full [N, V] logits never exist. With kd_kernel=reference they do:
                         b s V (4 h' + c + 4 [c < 4]) for the h' heads with a cross-entropy term (fp32 log-softmax
                         kept, logits in the compute dtype and their fp32 copy)

Host memory per rank (`slim plan` prints it): calibrating on the fly loads the whole teacher (its bf16 checkpoint, 2 P_t
bytes) on every rank; with compress.stats only rank 0 loads it, to cut it. Training reads checkpoints lazily.

a(layer), the activation estimate of one decoder layer per token: its two RMSNorm inputs (2 d), the input and the
output of every linear map in it (the router included), routed experts once per routed copy (top-k x (d + 2I + I + d)),
and for an MTP depth its two input norms and the [h; e] concatenation (4 d). Left out, as small beside these: the
teacher's forward (no graph is kept), attention-kernel internals (flash attention keeps a log-sum-exp per row),
the chunked KD kernel's chunk, embeddings and the final norm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from slim.harness.compression.shapes import student_shape
from slim.harness.config.schema import ModelConfig, PlanConfig, SlimConfig
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.mtp import construct_mtp
from slim.harness.models.params import ParamCount, count_parameters
from slim.harness.models.view import MoEView, moe_view, view
from slim.harness.training.loss_mixes import loss_mixes
from slim.harness.training.run import check_batch_split
from slim.kernels.kd_loss.chunked import default_chunk_size

GIB = 2**30
COMPUTE_BYTES = {"bf16-mixed": 2, "32-true": 4}  # bytes per element of compute (and the frozen teacher)
MAX_NODES = 64  # the most nodes `slim plan` tries when it looks for a cluster the step fits
CHECKPOINT_BYTES = 2  # released MoE checkpoints are bf16: a teacher loaded to host memory for calibration or the cut


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of one model: its parameter counts (MTP included) and its layers' shapes."""

    params: ParamCount  # the backbone, by slim.harness.models.params' convention
    mtp_params: int
    root_params: int  # the FSDP root units: embedding, LM head, final norm, MTP norms and projections
    largest_unit: int  # parameters of the largest decoder-layer unit (backbone or MTP block)
    layer_elements: list[int]  # a(layer) per backbone layer, then per MTP depth (module docstring)
    hidden_size: int
    vocab_size: int

    @property
    def total(self) -> int:
        return self.params.total + self.mtp_params


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU bytes by part and whether they fit one GPU's usable memory."""

    world_size: int
    micro_batch: int  # sequences per GPU per forward/backward
    accumulation: int  # micro-batches per optimizer step
    parts: dict[str, int]  # bytes per GPU, in the module docstring's order
    layer_activations: int  # the largest a(layer) of one micro-batch, bytes
    layer_input: int  # one layer's input of one micro-batch (what a checkpointed layer keeps), bytes
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    usable: int  # bytes per GPU: plan.gpu_memory_gib - plan.reserve_gib
    host: dict[str, int]  # host bytes of the heaviest rank by stage (module docstring)
    fixes: tuple[str, ...] = ()  # overrides that each alone make a plan that does not fit fit

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.usable


def _numel(module: nn.Module) -> int:
    return sum(param.numel() for param in module.parameters())


def _linear_elements(module: nn.Module) -> int:
    """Inputs plus outputs per token of every nn.Linear in `module`."""
    return sum(m.in_features + m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def _routed_elements(moe: MoEView, width: int) -> int:
    """Per token: top-k routed copies through gate_up (d -> 2I) and down (I -> d), and the router (d -> E)."""
    intermediate = moe.intermediate_size
    return moe.top_k * (width + 2 * intermediate + intermediate + width) + width + moe.num_experts


def layer_elements(module: nn.Module, moe: MoEView | None, width: int) -> int:
    """a(layer) of the module docstring for one decoder layer (or MTP block) `module` with MoE block `moe`."""
    routed = 0 if moe is None else _routed_elements(moe, width)
    return 2 * width + _linear_elements(module) + routed


def model_shape(model_cfg: ModelConfig) -> ModelShape:
    """The shape of `model_cfg`'s model and MTP module, from meta-device modules."""
    model = build_model(model_cfg, device="meta", dtype=torch.bfloat16)
    model_view, width = view(model), model_cfg.hidden_size
    blocks = [(layer.module, layer.moe, 0) for layer in model_view.layers]
    mtp_params = mtp_root = 0
    if model_cfg.mtp_num_layers:
        mtp = construct_mtp(model, "meta")
        blocks += [(layer.block, moe_view(layer.block.mlp), 4 * width) for layer in mtp.layers]
        mtp_params = _numel(mtp)
        mtp_root = mtp_params - sum(_numel(layer.block) for layer in mtp.layers)
    embedding, head = model_view.embed_tokens.weight, model_view.lm_head.weight
    root = embedding.numel() + (0 if head is embedding else head.numel()) + _numel(model_view.final_norm) + mtp_root
    return ModelShape(
        params=count_parameters(model),
        mtp_params=mtp_params,
        root_params=root,
        largest_unit=max(_numel(module) for module, _, _ in blocks),
        layer_elements=[layer_elements(module, moe, width) + extra for module, moe, extra in blocks],
        hidden_size=width,
        vocab_size=model_cfg.vocab_size,
    )


def validate_plan_config(cfg: SlimConfig) -> None:
    """One-line UserError naming the first bad `plan.*` (or `train.*`) field the plan reads."""
    plan, train = cfg.plan, cfg.train
    for field in ("gpus", "nodes"):
        if not getattr(plan, field) >= 1:
            raise UserError(f"plan.{field}: must be >= 1, got {getattr(plan, field)}")
    if not plan.gpu_memory_gib > 0:
        raise UserError(f"plan.gpu_memory_gib: must be > 0, got {plan.gpu_memory_gib}")
    if not 0 <= plan.reserve_gib < plan.gpu_memory_gib:
        raise UserError(f"plan.reserve_gib: must be in [0, plan.gpu_memory_gib={plan.gpu_memory_gib}), "
                        f"got {plan.reserve_gib}")
    if train.precision not in COMPUTE_BYTES:
        raise UserError(f"train.precision: unknown {train.precision!r}; valid: {', '.join(COMPUTE_BYTES)}")
    check_batch_split(train, plan.gpus * plan.nodes, "plan.gpus x plan.nodes")
    loss_mixes.validate(cfg.distill.loss, "distill.loss")


def _head_bytes(cfg: SlimConfig, student: ModelShape, tokens: int, compute: int) -> int:
    """Bytes of the loss heads (module docstring): the fused chunked head's buffers, or the reference's logits."""
    needs = loss_mixes.get(cfg.distill.loss).needs
    depth = cfg.model.mtp_num_layers
    vocab, width = student.vocab_size, student.hidden_size
    if cfg.distill.kd_kernel == "reference":
        heads = ("lm" in needs) + ("mtp_lm" in needs) * depth
        return tokens * vocab * (4 * heads + compute + (4 if compute < 4 else 0)) if heads else 0
    heads = bool({"lm", "kd"} & needs) + bool({"mtp_lm", "mtp_kd"} & needs) * depth
    rows = min(default_chunk_size(width), tokens)
    return heads * compute * (tokens + vocab) * width + 4 * vocab * width + 12 * rows * vocab if heads else 0


def _host_bytes(cfg: SlimConfig, teacher: ModelShape) -> dict[str, int]:
    """Host bytes of the heaviest rank by stage: the teacher loaded for calibration (every rank, when compress.stats
    is empty) and for the cut (rank 0)."""
    teacher_bytes = CHECKPOINT_BYTES * teacher.total
    return {"calibration, every rank": 0 if cfg.compress.stats else teacher_bytes,
            "compression, rank 0": teacher_bytes}


def plan_memory(cfg: SlimConfig, teacher: ModelShape, student: ModelShape) -> MemoryPlan:
    """Per-GPU bytes of distilling `student` from `teacher` under `cfg.train` on the `cfg.plan` cluster."""
    validate_plan_config(cfg)
    plan, train = cfg.plan, cfg.train
    world = plan.gpus * plan.nodes
    shards = world if train.strategy == "fsdp" else 1
    compute = COMPUTE_BYTES[train.precision]
    per_gpu = train.batch_size // world
    micro = train.micro_batch_size or per_gpu
    tokens = micro * cfg.data.seq_len
    layer, layer_input = tokens * compute * max(student.layer_elements), tokens * compute * student.hidden_size
    without = tokens * compute * sum(student.layer_elements)
    with_checkpointing = layer_input * len(student.layer_elements) + layer
    parts = {
        "student parameters": 4 * student.total // shards,
        "student gradients": 4 * student.total // shards,
        "optimizer states": 8 * student.total // shards,
        "frozen teacher": compute * teacher.total // shards,
        "all-gathered": 0 if shards == 1 else compute * (student.root_params + teacher.root_params
                                                         + 2 * max(student.largest_unit, teacher.largest_unit)),
        "activations": with_checkpointing if train.activation_checkpointing else without,
        "teacher forward": tokens * compute * (max(teacher.layer_elements)
                                               + teacher.hidden_size * (1 + cfg.model.mtp_num_layers)),
        "loss heads": _head_bytes(cfg, student, tokens, compute),
    }
    usable = int((plan.gpu_memory_gib - plan.reserve_gib) * GIB)
    return MemoryPlan(world, micro, per_gpu // micro, parts, layer, layer_input, without, with_checkpointing, usable,
                      _host_bytes(cfg, teacher))


def plan_run(cfg: SlimConfig) -> MemoryPlan:
    """`plan_memory` for the teacher `cfg.model` and the student the `cfg.compress` recipe cuts from it."""
    validate_plan_config(cfg)
    recipe = cfg.compress
    student = student_shape(cfg.model, recipe.depth.num_drop, recipe.width.hidden_size, recipe.experts.num_experts,
                            recipe.experts.top_k).model
    teacher, student = model_shape(cfg.model), model_shape(student)
    plan = plan_memory(cfg, teacher, student)
    return plan if plan.fits else dataclasses.replace(plan, fixes=_fixes(cfg, teacher, student))


def _fixes(cfg: SlimConfig, teacher: ModelShape, student: ModelShape) -> tuple[str, ...]:
    """The switches that each alone make the distillation step fit: activation checkpointing, a micro-batch of one
    sequence, FSDP, or the fewest nodes (up to MAX_NODES) the global batch still splits over."""
    train = cfg.train
    switches = [(override, dataclasses.replace(cfg, train=dataclasses.replace(train, **change)))
                for override, change, wanted in (
                    ("train.activation_checkpointing=true", {"activation_checkpointing": True},
                     not train.activation_checkpointing),
                    ("train.micro_batch_size=1", {"micro_batch_size": 1}, train.micro_batch_size != 1),
                    ("train.strategy=fsdp", {"strategy": "fsdp"}, train.strategy != "fsdp")) if wanted]
    fixes = [override for override, changed in switches if plan_memory(changed, teacher, student).fits]
    for nodes in range(cfg.plan.nodes + 1, MAX_NODES + 1):
        more = dataclasses.replace(cfg, plan=dataclasses.replace(cfg.plan, nodes=nodes))
        if train.batch_size % (cfg.plan.gpus * nodes) == 0 and plan_memory(more, teacher, student).fits:
            return (*fixes, f"plan.nodes={nodes} train.num_nodes={nodes}")
    return tuple(fixes)


def format_plan(plan: MemoryPlan, cfg: PlanConfig, notes: tuple[str, ...] = ()) -> str:
    """The plan as a table of GiB per GPU, then `notes` (one line each), then the verdict, last."""
    lines = [f"{cfg.nodes} node(s) x {cfg.gpus} GPUs of {cfg.gpu_memory_gib:g} GiB (W = {plan.world_size}); "
             f"micro-batch {plan.micro_batch} sequence(s) x {plan.accumulation} accumulation steps per GPU"]
    lines += [f"  {name:<20} {value / GIB:8.2f} GiB" for name, value in plan.parts.items()]
    lines.append(f"  {'total':<20} {plan.total / GIB:8.2f} GiB of {plan.usable / GIB:.2f} GiB usable "
                 f"({cfg.reserve_gib:g} GiB reserved)")
    lines.append(f"  activations: {plan.activations_with_checkpointing / GIB:.2f} GiB with checkpointing, "
                 f"{plan.activations_without_checkpointing / GIB:.2f} GiB without; per decoder layer up to "
                 f"{plan.layer_activations / GIB:.3f} GiB, {plan.layer_input / GIB:.3f} GiB checkpointed")
    lines += [f"  host memory, {stage}: {value / GIB:.2f} GiB" for stage, value in plan.host.items()]
    if not plan.fits:
        lines.append("  each of these alone fits: " + ("; ".join(plan.fixes) if plan.fixes else "none found"))
    lines += [f"  {note}" for note in notes]
    lines.append("fits" if plan.fits else f"does not fit: the distillation step is "
                 f"{(plan.total - plan.usable) / GIB:.2f} GiB over per GPU")
    return "\n".join(lines)
