"""Typed configuration: OmegaConf structured dataclasses, one per component.

The config tree mirrors the module tree (torchtitan style): `model` builds the network,
`data` the corpus/tokenizer/packed datasets, `train` the optimizer and trainer.
YAML files in `conf/` only override these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Field metadata key: a function returning the field's allowed values, checked when a config is loaded.
CHOICES = "choices"
# Field metadata key: "module:attribute" of the Registry whose entry the field names, checked when a config is
# loaded (importing the registry only when the value differs from the default, which is always registered).
REGISTRY = "registry"


# Field metadata key: the Range a numeric field's value must lie in, checked when a config is loaded.
RANGE = "range"


@dataclass(frozen=True)
class Range:
    """Where a number may lie: `low` / `high` bounds (None: unbounded), each inclusive or not."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def contains(self, value: float) -> bool:
        if value != value:  # NaN lies nowhere
            return False
        above = self.low is None or (value >= self.low if self.low_inclusive else value > self.low)
        below = self.high is None or (value <= self.high if self.high_inclusive else value < self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        if self.low is None:
            return f"{'<=' if self.high_inclusive else '<'} {self.high:g}"
        return (f"in {'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}"
                f"{']' if self.high_inclusive else ')'}")


def at_least(default: float, low: float) -> Any:
    """A number >= `low`."""
    return field(default=default, metadata={RANGE: Range(low)})


def positive(default: float) -> Any:
    """A number > 0."""
    return field(default=default, metadata={RANGE: Range(0, low_inclusive=False)})


def between(default: float, low: float, high: float, low_inclusive: bool = True) -> Any:
    """A number in [low, high] (or (low, high] when not `low_inclusive`)."""
    return field(default=default, metadata={RANGE: Range(low, high, low_inclusive)})


# Field metadata key: for a field added after results were stored, the value that behaves as before it existed; a
# grid cell key leaves the field out while it holds that value, so stored cells stay valid (harness/grid/expand.py).
NEUTRAL = "neutral"


def added_later(spec: Any, neutral: Any) -> Any:
    """`spec` (a dataclasses field) marked as added after results were stored, `neutral` its as-before value."""
    return field(default=spec.default, default_factory=spec.default_factory,
                 metadata={**spec.metadata, NEUTRAL: neutral})


def registry_key(default: str, group: str) -> Any:
    """A field naming an entry of the registry of entry-point `group` (slim.harness.plugins.GROUPS), `default` when
    unset; checked at load against the declared names, importing nothing."""
    return field(default=default, metadata={REGISTRY: group})


def experts_implementation_choices() -> tuple[str, ...]:
    """"auto" and every experts implementation transformers registers: "eager" and its ExpertsInterface entries."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    return ("auto", "eager", *sorted(ALL_EXPERTS_FUNCTIONS))


@dataclass
class ModelConfig:
    """Shape of a MoE causal LM; `family` picks the transformers architecture."""

    family: str = registry_key("qwen3_next", "slim.model_families")
    vocab_size: int = 4096
    hidden_size: int = 128
    num_hidden_layers: int = 4
    # Qwen3-Next: every `full_attention_interval`-th layer is gated full attention, the rest Gated DeltaNet.
    full_attention_interval: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 32
    linear_value_head_dim: int = 32
    linear_conv_kernel_dim: int = 4
    num_experts: int = 16
    num_experts_per_tok: int = 4
    moe_intermediate_size: int = 64
    # 0 means "no shared expert" (qwen3_moe / olmoe have none).
    shared_expert_intermediate_size: int = 128
    norm_topk_prob: bool = True
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.25
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    router_aux_loss_coef: float = 0.001
    # Multi-token-prediction depth D (SlimQwen eq 9); the harness owns the MTP module. Written to config.json as
    # `mtp_num_hidden_layers`, the released Qwen3-Next key.
    mtp_num_layers: int = 1
    initializer_range: float = 0.02


@dataclass
class ModelRuntimeConfig:
    """How every model a command loads computes: training (student, MTP, teacher), calibration, compression,
    teacher caching, eval and the MoE adaptations all apply it (harness/models/experts_policy.py)."""

    # MoE experts implementation: "auto" = grouped_mm where torch runs the grouped GEMM natively on the device and
    # dtype, else eager; or one transformers registers (eager, grouped_mm, batched_mm, ...). Recorded in summaries.
    experts_implementation: str = field(default="auto", metadata={CHOICES: experts_implementation_choices})


@dataclass
class DataConfig:
    """Where documents come from (a registered source, harness/data/sources), their deterministic split, the
    tokenizer and the packed sequences (in memory for the shipped corpus, or memory-mapped shards written by
    `slim prepare-data` under `output`)."""

    source: str = registry_key("kjv", "slim.data_sources")  # kjv, text, jsonl, parquet, hf_disk
    path: str = "data/corpus/kjv.txt.gz"  # the source's file or directory
    # Any Hugging Face tokenizer directory (a teacher checkpoint works); the kjv source trains a BPE there when missing.
    tokenizer: str = "artifacts/tokenizer"
    output: str = ""  # prepared shards (`slim prepare-data`); "" = none: only the kjv source packs in memory
    vocab_size: int = 4096  # size of the BPE the kjv source trains; a loaded tokenizer keeps its own
    seq_len: int = at_least(256, 2)  # a window predicts seq_len - 1 next tokens
    # The kjv source sends every `heldout_every`-th chapter to validation and the one before to calibration; other
    # sources send a document whose id hashes to heldout_every - 1 (mod heldout_every) to validation, - 2 to
    # calibration.
    heldout_every: int = at_least(20, 3)  # every Nth chapter held out, the one before it for calibration
    seed: int = 0
    text_field: str = "text"  # jsonl field / parquet or hf_disk column holding a document's text
    text_documents: str = "file"  # text source: "file" (one document per file) or "block" (per blank-line block)
    skip_bad_documents: bool = False  # skip (and count) undecodable documents instead of refusing the corpus
    num_proc: int = at_least(1, 1)  # `slim prepare-data` tokenizer processes
    # `slim prepare-data`: a shard closes at the first document end past this many tokens
    shard_tokens: int = at_least(1 << 24, 1)
    num_workers: int = at_least(0, 0)  # DataLoader worker processes of training and evaluation


@dataclass
class TrainConfig:
    """Optimizer, schedule and trainer settings shared by pretraining and distillation."""

    max_steps: int = at_least(400, 1)
    batch_size: int = at_least(16, 1)
    lr: float = positive(3e-3)
    min_lr_ratio: float = between(0.1, 0, 1)
    warmup_steps: int = at_least(30, 0)
    weight_decay: float = at_least(0.1, 0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = at_least(1.0, 0)  # 0: no clipping
    val_every: int = at_least(100, 1)
    val_batches: int = at_least(16, 1)
    # "32-true" or "bf16-mixed" (under fsdp: FSDP2 MixedPrecisionPolicy, bf16 compute, fp32 master weights/reduce).
    precision: str = "32-true"
    # Sequences per process per forward/backward; the process's slice of `batch_size` is accumulated over
    # slice / micro_batch_size micro-batches before each optimizer step. 0: the whole slice at once.
    micro_batch_size: int = at_least(0, 0)
    activation_checkpointing: bool = False  # recompute each decoder layer (student and MTP) in backward
    compile: bool = False  # torch.compile each decoder block
    accelerator: str = "auto"
    devices: int = at_least(1, 1)
    num_nodes: int = at_least(1, 1)
    # "auto": Lightning's default (one process, or DDP); "fsdp": FSDP2 via ModelParallelStrategy, any num_nodes.
    strategy: str = "auto"
    log_every: int = at_least(10, 1)  # steps between logged training metrics
    seed: int = 0
    num_threads: int = at_least(0, 0)
    resume: bool = True
    # last.ckpt between validations (0: off): every N optimizer steps and/or every M minutes of training.
    checkpoint_every_steps: int = added_later(at_least(0, 0), neutral=0)
    checkpoint_every_minutes: float = added_later(at_least(0.0, 0), neutral=0.0)
    # Signals that make every rank finish its step, write last.ckpt and exit 75 for a requeue (Slurm preemption and
    # time limits send SIGTERM; `sbatch --signal=B:USR1@300` sends SIGUSR1 ahead of the limit). [] leaves them alone.
    stop_signals: list[str] = added_later(field(default_factory=lambda: ["SIGTERM", "SIGUSR1"]),
                                          neutral=["SIGTERM", "SIGUSR1"])


@dataclass
class CalibrationConfig:
    """One calibration pass over held-out text (SlimQwen uses 1024 samples)."""

    num_samples: int = at_least(1024, 1)
    batch_size: int = at_least(8, 1)
    # Tokens per MoE layer on which *every* expert is evaluated (for the `expert_outputs` similarity).
    probe_tokens: int = at_least(512, 0)
    # One decoder block's activations in memory at a time, hidden states carried between blocks.
    layerwise: bool = False
    device: str = "cpu"
    output: str = "stats.safetensors"


@dataclass
class DepthTarget:
    """Depth compression: drop `num_drop` decoder layers chosen by `selector`."""

    num_drop: int = at_least(0, 0)
    selector: str = registry_key("last_n", "slim.depth_selectors")
    # A cut that drops every full-attention layer of a hybrid (linear + full attention) model is refused unless
    # this is true: such a student keeps no attention at all, unlike the paper's (9 of 12 groups kept).
    allow_no_attention: bool = False


@dataclass
class WidthTarget:
    """Width compression: keep `hidden_size` hidden dims chosen by `selector` (0 = keep all)."""

    hidden_size: int = at_least(0, 0)
    selector: str = registry_key("rmsnorm_mean_abs", "slim.width_selectors")


@dataclass
class ExpertTarget:
    """Expert compression: per-layer (uniform) or global budget, reducer + criterion + similarity."""

    # target experts per MoE layer (uniform) or average per layer (global); 0 = keep all
    num_experts: int = at_least(0, 0)
    top_k: int = at_least(0, 0)  # student top-k; 0 = keep the teacher's
    reducer: str = registry_key("prune", "slim.expert_reducers")
    criterion: str = registry_key("reap", "slim.expert_criteria")
    similarity: str = registry_key("router_logits", "slim.expert_similarities")
    budget: str = "uniform"  # "uniform" | "global"
    min_per_layer: int = at_least(1, 1)  # floor per layer under the global budget (raised to top_k automatically)
    exempt_first: int = at_least(0, 0)  # first N MoE layers keep all experts
    exempt_last: int = at_least(0, 0)  # last N MoE layers keep all experts


@dataclass
class CompressConfig:
    """A compression recipe: teacher + stats -> student directory."""

    teacher: str = "assets/tiny-teacher"
    stats: str = ""  # calibration stats file; computed on the fly when empty
    output: str = "runs/student"
    depth: DepthTarget = field(default_factory=DepthTarget)
    width: WidthTarget = field(default_factory=WidthTarget)
    experts: ExpertTarget = field(default_factory=ExpertTarget)
    # `slim run` only: progressive plan key and the token share of its early stages.
    plan: str = registry_key("one_shot", "slim.progressive_plans")
    plan_first_share: float = between(0.1, 0, 1, low_inclusive=False)


@dataclass
class DistillConfig:
    """Distillation of a student from a frozen teacher (SlimQwen sec 3.3, eq 12; Table 7 schedules)."""

    teacher: str = "assets/tiny-teacher"  # teacher HF directory (its MTP weights, when present, give MTP-KD targets)
    student: str = "runs/student-slimqwen"  # student HF directory to start from (usually `slim compress` output)
    output: str = "runs/distilled"  # where the distilled student (HF dir + MTP weights + tokenizer) is written
    # loss mix key: lm, kd, kd+lm, kd+mtp_kd, kd+lm+mtp_lm, full
    loss: str = registry_key("full", "slim.loss_mixes")
    # weight schedule key for λ, the KD-vs-LM weight
    lambda_schedule: str = registry_key("linear", "slim.weight_schedules")
    lambda_start: float = between(1.0, 0, 1)  # λ at progress 0
    lambda_end: float = between(0.75, 0, 1)  # λ at progress 1
    # weight schedule key for β, the MTP-vs-backbone weight
    beta_schedule: str = registry_key("cosine", "slim.weight_schedules")
    beta_start: float = at_least(0.3, 0)  # β at progress 0
    beta_end: float = at_least(0.1, 0)  # β at progress 1
    temperature: float = positive(1.0)  # softmax temperature of both KD distributions (no τ² factor)
    # KD implementation key (kernels/kd_loss): reference, chunked, triton
    kd_kernel: str = registry_key("chunked", "slim.kd_kernels")
    router_kd_weight: float = at_least(0.0, 0)  # router-logit KD weight (harness/training/router_kd.py); 0 = off
    # Student initialization for `slim run`: "pruned" (compressed teacher) or "scratch" (same shape, random init,
    # SlimQwen Table 1 baseline).
    init: str = "pruned"
    # Offline teacher top-k written by `slim cache-teacher` (harness/training/teacher_cache.py); the `kd` term then
    # reads it instead of running the teacher. Empty = run the teacher live.
    teacher_cache: str = ""
    # `slim cache-teacher`: teacher token ids (and logits) kept per position, in [1, V]
    teacher_cache_top_k: int = at_least(64, 1)


@dataclass
class MTPAcceptanceConfig:
    """Speculative-decoding acceptance of the model's MTP drafter (SlimQwen Table 4)."""

    # K drafts per step (acc_1..acc_K: mtp_acc_k in a grid's store); 0 = the MTP depth D;
    # beyond D the last depth is reused
    num_draft_tokens: int = 0
    num_prompts: int = 8  # held-out prompts, each continued greedily
    prompt_len: int = 64  # prompt tokens
    new_tokens: int = 64  # greedy tokens generated per prompt (must exceed num_draft_tokens)


@dataclass
class EfficiencyConfig:
    """Prefill / decode speed and peak memory, student vs teacher in one run (SlimQwen Table 11: 128 + 128)."""

    enabled: bool = True
    batch_size: int = 1
    prompt_len: int = 128
    new_tokens: int = 128
    repeats: int = 10  # timed runs, averaged (the paper: 10 after 3 warm-up runs)
    warmup: int = 3  # untimed runs first
    backends: list[str] = field(default_factory=list)  # also timed under these (harness/evaluation/backends: vllm)


@dataclass
class EvalConfig:
    """`slim eval`: lm-eval tasks, perplexity, MTP acceptance and efficiency of one model -> eval_summary.json."""

    model: str = "assets/tiny-teacher"  # HF directory to evaluate (its tokenizer and MTP weights, when present)
    teacher: str = ""  # HF directory to compare speed and memory against; "" measures the model alone
    # lm-eval task names: the local kjv_cloze, kjv_next_verse, kjv_complete (tag kjv) or any real lm-eval task
    tasks: list[str] = field(default_factory=lambda: ["kjv_cloze", "kjv_next_verse", "kjv_complete"])
    include_path: list[str] = field(default_factory=list)  # more folders of lm-eval task YAMLs (--include_path)
    limit: int = 0  # documents per task; 0 = all
    num_fewshot: int = 0  # -1: each task's own few-shot setting (its YAML's num_fewshot)
    batch_size: int = 16  # lm-eval and perplexity batch size
    perplexity_batches: int = 16  # validation batches of data.seq_len tokens; 0 skips perplexity
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:N"
    offline: bool = True  # no Hugging Face Hub requests: real tasks must find their datasets in the local cache
    mtp: MTPAcceptanceConfig = field(default_factory=MTPAcceptanceConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)


@dataclass
class TrackingConfig:
    """Weights & Biases logging of every training run (harness/tracking): offline by default, `wandb sync`-able."""

    wandb: bool = True  # false: no W&B run at all (the CSV metrics are always written)
    mode: str = "offline"  # offline (no network) | online | disabled
    project: str = "slimqwen"
    group: str = ""  # runs compared together, e.g. the grid or search name; "" = none
    name: str = ""  # run name, e.g. the grid cell key; "" = the run directory's name
    dir: str = ""  # parent of the `wandb/` folder; "" = run_dir


@dataclass
class PlanConfig:
    """`slim plan` (harness/planning.py): the cluster whose per-GPU memory a distillation run is estimated for."""

    gpus: int = 8  # GPUs per node
    nodes: int = 1
    gpu_memory_gib: float = 80.0  # memory of one GPU
    # Kept free on every GPU for the CUDA context, NCCL buffers and allocator fragmentation: a harness choice.
    reserve_gib: float = 4.0


@dataclass
class SlimConfig:
    """Root config: every `slim` subcommand reads the sections it needs. Plug-ins add their own options
    (harness/config/sections.py); `load_config` resolves this class extended with them."""

    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    model_runtime: ModelRuntimeConfig = field(default_factory=ModelRuntimeConfig)
