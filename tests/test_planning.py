"""`slim plan`: per-GPU bytes of a distillation run by hand-checked arithmetic, and the paper's run on 8 x 80 GiB."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from slim.harness.cli.main import main
from slim.harness.compression.shapes import student_shape
from slim.harness.config.load import load_config
from slim.harness.config.schema import ModelConfig
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.errors import UserError
from slim.harness.models.params import ParamCount
from slim.harness.planning import GIB, ModelShape, model_shape, plan_memory, plan_run
from slim.harness.training.distill_module import DistillModule
from tests.fixtures.distill_pair import TWO_LAYER_MODEL, distill_config

# d = 64: one Gated DeltaNet layer, one gated full-attention layer, 8 experts top-2 (I = 32), shared expert 64, D = 1.
TINY = ModelConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, full_attention_interval=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
                   linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16, num_experts=8,
                   num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                   mtp_num_layers=1)


def test_tiny_model_shape_by_hand():
    """Per-token activation elements, root and largest unit of the tiny model, counted by hand."""
    shape = model_shape(TINY)
    d = 64
    shared = 3 * (d + 64) + (d + 1)  # shared gate/up/down (64 -> 64) and its gate (64 -> 1): inputs + outputs
    moe = shared + 2 * (d + 2 * 32 + 32 + d) + (d + 8)  # + top-2 routed copies + router (64 -> 8)
    linear = (d + 2 * 32 + 2 * 64) + (d + 2 * 4) + (64 + d)  # in_proj_qkvz, in_proj_ba, out_proj
    full = (d + 2 * 4 * 16) + 2 * (d + 2 * 16) + (64 + d)  # q_proj (query + gate), k_proj, v_proj, o_proj
    assert shape.layer_elements == [2 * d + linear + moe, 2 * d + full + moe, 2 * d + full + moe + 4 * d]
    mtp_root = 3 * d + d * 2 * d  # hnorm, enorm, norm, eh_proj [d, 2d]
    assert shape.root_params == 2 * 256 * d + d + mtp_root  # embedding, LM head, final norm
    experts = 8 * 64 * d + 8 * d * 32 + 8 * d  # gate_up, down, router
    moe_params = experts + 3 * 64 * d + d  # + shared expert and its gate
    linear_params = d * 192 + d * 8 + 64 * d + 128 * 4 + 4 + 4 + 16  # projections, conv1d, dt_bias, A_log, norm
    full_params = d * 128 + 2 * d * 32 + 64 * d + 16 + 16  # projections, q/k norms
    assert shape.largest_unit == max(linear_params, full_params) + moe_params + 2 * d
    assert shape.mtp_params == full_params + moe_params + 2 * d + mtp_root


def _shape(total: int, root: int, unit: int, elements: list[int]) -> ModelShape:
    counts = ParamCount(total=total, active=total, embedding=0, lm_head=0, experts=0, shared_experts=0, routers=0)
    return ModelShape(counts, mtp_params=0, root_params=root, largest_unit=unit, layer_elements=elements,
                      hidden_size=16, vocab_size=100)


def test_bytes_per_gpu_by_hand():
    """Each part is the docstring's formula on small round numbers: 4 GPUs, bf16-mixed, micro-batch 2 x 8 tokens."""
    cfg = load_config(["plan.gpus=2", "plan.nodes=2", "plan.gpu_memory_gib=1", "plan.reserve_gib=0.5",
                       "train.batch_size=16", "train.micro_batch_size=2", "train.precision=bf16-mixed",
                       "train.strategy=fsdp", "train.activation_checkpointing=true", "data.seq_len=8",
                       "distill.loss=full", "model.mtp_num_layers=1"])
    student = _shape(total=4000, root=100, unit=300, elements=[50, 70, 60])
    teacher = _shape(total=8000, root=200, unit=500, elements=[90])
    plan = plan_memory(cfg, teacher, student)
    tokens = 2 * 8
    assert (plan.world_size, plan.micro_batch, plan.accumulation) == (4, 2, 2)  # 16 / 4 GPUs = 4 = 2 x 2
    assert plan.parts == {
        "student parameters": 4 * 4000 // 4,
        "student gradients": 4 * 4000 // 4,
        "optimizer states": 8 * 4000 // 4,
        "frozen teacher": 2 * 8000 // 4,
        "all-gathered": 2 * (100 + 200 + 2 * 500),
        "activations": tokens * 2 * (16 * 3 + 70),
        "teacher forward": tokens * 2 * (90 + 16 * (1 + 1)),  # its largest layer, backbone + MTP hidden states
        # backbone + one MTP head: their [N, d] and [V, d] gradients in bf16, one fp32 [V, d] accumulator, three fp32
        # [rows, V] chunk buffers with rows = min(256, N)
        "loss heads": 2 * 2 * (tokens + 100) * 16 + 4 * 100 * 16 + 12 * tokens * 100,
    }
    assert plan.activations_without_checkpointing == tokens * 2 * (50 + 70 + 60)
    assert plan.total == sum(plan.parts.values()) and plan.usable == GIB // 2 and plan.fits
    fp32 = plan_memory(load_config(["train.precision=32-true", "train.batch_size=1", "distill.loss=kd",
                                    "plan.gpus=1", "data.seq_len=8"]), teacher, student)
    assert fp32.parts["frozen teacher"] == 4 * 8000
    assert fp32.parts["loss heads"] == 4 * (8 + 100) * 16 + 4 * 100 * 16 + 12 * 8 * 100  # the backbone's KD head
    reference = plan_memory(load_config(["train.precision=32-true", "train.batch_size=1", "distill.loss=kd+lm",
                                         "distill.kd_kernel=reference", "plan.gpus=1", "data.seq_len=8"]),
                            teacher, student)
    assert reference.parts["loss heads"] == 8 * 100 * (4 * 1 + 4)  # full logits: fp32 log-softmax + fp32 logits
    assert fp32.host == {"calibration, every rank": 2 * 8000, "compression, rank 0": 2 * 8000}
    assert fp32.parts["activations"] == 8 * 4 * (50 + 70 + 60)  # no checkpointing by default


def test_paper_run_on_one_node_of_eight_80gib_gpus(capsys):
    """The 80B teacher + 23A2B student at the 120B-token recipe on 8 x 80 GiB: the parts sum to the total, the student
    is the recipe's 23,176,328,256 parameters plus its MTP, and one node fits (the loss heads are the fused head's
    buffers, not full logits); on 8 x 64 GiB it does not, and the plan names the fix: a second node."""
    argv = ["plan", "model=qwen3-next-80b-a3b", "conf/recipes/qwen3-next-23a2b-120b.yaml", "plan.gpus=8",
            "plan.gpu_memory_gib=80"]
    assert main([*argv, "plan.nodes=1"]) == 0
    one_node = capsys.readouterr().out
    cfg = load_config(["model=qwen3-next-80b-a3b", "plan.nodes=1"], files=["conf/recipes/qwen3-next-23a2b-120b.yaml"])
    plan = plan_run(cfg)
    assert list(plan.parts) == ["student parameters", "student gradients", "optimizer states", "frozen teacher",
                                "all-gathered", "activations", "teacher forward", "loss heads"]
    assert plan.total == sum(plan.parts.values()) and plan.usable == 76 * GIB
    teacher = model_shape(cfg.model)
    recipe = cfg.compress
    student = model_shape(student_shape(cfg.model, recipe.depth.num_drop, recipe.width.hidden_size,
                                        recipe.experts.num_experts, recipe.experts.top_k).model)
    assert student.params.total == 23_176_328_256 and student.mtp_params > 0
    assert plan.parts["frozen teacher"] == 2 * teacher.total // 8
    assert plan.parts["student parameters"] == plan.parts["student gradients"] == 4 * student.total // 8
    assert plan.parts["optimizer states"] == 8 * student.total // 8
    assert plan.accumulation == 64 and plan.micro_batch == 1
    assert plan.fits and one_node.splitlines()[-1] == "fits"
    assert main([*argv, "plan.nodes=1", "plan.gpu_memory_gib=64"]) == 3  # exit 3: does not fit
    small = capsys.readouterr().out.splitlines()
    assert small[-1].startswith("does not fit: the distillation step is")
    assert small[-3] == "  each of these alone fits: plan.nodes=2 train.num_nodes=2"


def test_too_small_cluster_does_not_fit(capsys):
    """The tiny preset on one GPU of 1 GiB with 0.9 GiB reserved does not fit; the verdict says by how much."""
    assert main(["plan", "model=tiny", "plan.gpus=1", "plan.gpu_memory_gib=1", "plan.reserve_gib=0.999",
                 "train.batch_size=8"]) == 3
    assert capsys.readouterr().out.splitlines()[-1].startswith("does not fit: ")


@pytest.mark.parametrize(("override", "field"), [
    ("plan.gpus=0", "plan.gpus"),
    ("plan.gpu_memory_gib=0", "plan.gpu_memory_gib"),
    ("plan.reserve_gib=80", "plan.reserve_gib"),
    ("train.batch_size=12", "train.batch_size"),
    ("train.precision=fp8", "train.precision"),
])
def test_bad_plan_fields_are_named(override: str, field: str):
    """Each bad field fails with one line naming it, before any model is built."""
    with pytest.raises(UserError, match=f"^{field}"):
        plan_run(load_config(["plan.gpus=8", override]))


class StoragePeak(TorchDispatchMode):
    """The most bytes of CPU tensor storage alive at once among the storages created while it is active (a storage's
    Python object lives exactly as long as the storage, so a weak finalizer marks its release)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                if storage._cdata not in self.live:
                    self.live[storage._cdata] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._release, storage._cdata)
        return out


def test_plan_is_within_a_quarter_of_a_measured_tiny_step(teacher_dir, student_dir, tiny_config):
    """One distillation step of the tiny pair on the CPU (teacher and student forward, eq 12 with MTP, backward, AdamW
    step): the models' weights plus the peak of the tensors the step creates (gradients, optimizer states,
    activations, loss buffers) is within 25% of `slim plan`'s total."""
    cfg = distill_config(tiny_config, teacher_dir, student_dir, *TWO_LAYER_MODEL, "distill.loss=full",
                         "train.batch_size=8", "compress.depth.num_drop=1", "plan.gpus=1")
    module = DistillModule(cfg.distill, cfg.train)
    module.configure_model()
    optimizer = torch.optim.AdamW([param for param in module.parameters() if param.requires_grad])
    data = CorpusDataModule(cfg.data, batch_size=cfg.train.batch_size)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    models = (module.student, module.student_mtp, module.teacher.model, module.teacher.mtp)
    weights = sum(tensor.nbytes for model in models for tensor in [*model.parameters(), *model.buffers()])
    with StoragePeak() as step:
        module.step_loss(batch).total.backward()
        optimizer.step()
    measured, planned = weights + step.peak, plan_run(cfg).total
    print(f"tiny step: planned {planned / 2**20:.2f} MiB, measured {measured / 2**20:.2f} MiB")
    assert abs(planned - measured) <= 0.25 * measured


def test_the_qwen3_5_recipe_cuts_in_the_papers_proportions_and_fits_one_node(capsys):
    """Qwen3.5-35B-A3B under the paper's recipe (issue 26): 40 -> 30 layers, hidden 1536, 128 experts top-6, about 11B
    total parameters, on one node of 8 x 80 GiB."""
    cfg = load_config(["model=qwen3.5-35b-a3b", "plan.nodes=1", "plan.gpus=8", "plan.gpu_memory_gib=80"],
                      files=["conf/recipes/qwen3.5-35b-a3b-slim.yaml"])
    recipe = cfg.compress
    student = student_shape(cfg.model, recipe.depth.num_drop, recipe.width.hidden_size, recipe.experts.num_experts,
                            recipe.experts.top_k).model
    assert (student.family, student.num_hidden_layers, student.hidden_size) == ("qwen3_5_moe_text", 30, 1536)
    assert (student.num_experts, student.num_experts_per_tok) == (128, 6)
    assert 10e9 < model_shape(student).params.total < 12e9
    assert plan_run(cfg).fits
