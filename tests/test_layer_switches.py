"""train.activation_checkpointing and train.compile: the same loss and gradients as plain eager layers, every
decoder layer (student and MTP) recomputed in backward, and module names and state-dict keys unchanged."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from slim.harness.config.load import load_config
from slim.harness.config.schema import SlimConfig, TrainConfig
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.io import save_pretrained
from slim.harness.training.distill_module import DistillModule
from slim.harness.training.layer_switches import decoder_blocks
from slim.harness.training.lm_module import PretrainModule, next_token_loss
from slim.harness.training.load_balance import global_batch_balance_loss
from slim.harness.training.run import validate_train_config
from tests.conftest import TINY_OVERRIDES

# hidden 64, 2 layers (Gated DeltaNet + full attention), 8 experts top-2, one MTP depth.
TINY_MODEL = ["model.hidden_size=64", "model.num_hidden_layers=2", "model.full_attention_interval=2",
              "model.num_experts=8", "model.num_experts_per_tok=2", "model.moe_intermediate_size=32",
              "model.shared_expert_intermediate_size=64"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> tuple[SlimConfig, dict[str, torch.Tensor]]:
    """(config distilling a random tiny student from a random tiny teacher, on the full mix; one batch of 4)."""
    root = tmp_path_factory.mktemp("switches")
    cfg = load_config([*TINY_OVERRIDES, *TINY_MODEL, "data.seq_len=32", f"data.tokenizer={tokenizer_dir}"])
    data = CorpusDataModule(cfg.data, batch_size=4)
    data.setup()
    dirs = [save_pretrained(build_model(cfg.model, seed=seed), root / name, data.tokenizer)
            for seed, name in ((0, "teacher"), (1, "student"))]
    cfg = load_config([*TINY_OVERRIDES, *TINY_MODEL, "data.seq_len=32", f"data.tokenizer={tokenizer_dir}",
                       "distill.loss=full", f"distill.teacher={dirs[0]}", f"distill.student={dirs[1]}"])
    return cfg, next(iter(data.val_dataloader()))


def _module(cfg: SlimConfig, **switches: bool) -> DistillModule:
    """A configured DistillModule with train.<switch>=<value>; the student's fresh MTP module drawn from seed 0."""
    module = DistillModule(cfg.distill, replace(cfg.train, **switches))
    torch.manual_seed(0)
    module.configure_model()
    return module


def _gradients(module: DistillModule, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    """(loss, gradient of every student and MTP parameter) after one backward of the training loss."""
    loss = module.step_loss(batch).total
    loss.backward()
    named = [*module.student.named_parameters(), *module.student_mtp.named_parameters(prefix="mtp")]
    return loss.item(), {name: param.grad for name, param in named if param.grad is not None}


def _forward_counts(module: DistillModule) -> Counter:
    """Counts forward starts of each decoder block's children, keyed by block index (student layers, then MTP);
    starts, since a recompute stops as soon as it has rebuilt what backward needs."""
    counts: Counter = Counter()
    for index, block in enumerate(decoder_blocks(module.student, module.student_mtp)):
        for child in block.children():
            child.register_forward_pre_hook(lambda *_, index=index: counts.update([index]))
    return counts


def _max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


def test_activation_checkpointing_recomputes_every_layer_with_identical_gradients(setup):
    """Each student and MTP decoder layer runs twice (forward, recompute in backward); loss and gradients match."""
    cfg, batch = setup
    plain, checkpointed = _module(cfg), _module(cfg, activation_checkpointing=True)
    plain_counts, checkpointed_counts = _forward_counts(plain), _forward_counts(checkpointed)
    plain_loss, plain_grads = _gradients(plain, batch)
    loss, grads = _gradients(checkpointed, batch)
    blocks = len(decoder_blocks(plain.student, plain.student_mtp))
    assert blocks == 3 and sorted(plain_counts) == list(range(blocks))
    assert all(checkpointed_counts[index] == 2 * plain_counts[index] for index in range(blocks)), checkpointed_counts
    difference = _max_difference(plain_grads, grads)
    print(f"loss {plain_loss} vs {loss}; max |grad difference| over {len(grads)} tensors = {difference:.2e}")
    assert loss == plain_loss
    assert difference <= 1e-7


def test_checkpointed_pretrain_model_has_identical_gradients(setup):
    """The pretrain model with every layer checkpointed: the same loss (LM + balance over router logits
    collected in forward) and the same gradients."""
    cfg, batch = setup
    results = []
    for switch in (False, True):
        module = PretrainModule(cfg.model, replace(cfg.train, activation_checkpointing=switch))
        module.configure_model()
        out = module(batch["input_ids"])
        loss = next_token_loss(out.logits, batch["labels"]) + global_batch_balance_loss(
            out.router_logits, cfg.model.num_experts_per_tok)
        loss.backward()
        results.append((loss.item(), {name: param.grad for name, param in module.named_parameters()}))
    (plain_loss, plain_grads), (loss, grads) = results
    print(f"loss {plain_loss} vs {loss}; max |grad difference| = {_max_difference(plain_grads, grads):.2e}")
    assert loss == plain_loss
    assert _max_difference(plain_grads, grads) <= 1e-7


def test_switches_keep_module_names_and_state_dict_keys(setup):
    """Checkpointed and compiled modules keep every parameter name, so checkpoints load with the switches
    on or off; the frozen teacher is left uncheckpointed."""
    cfg, _ = setup
    plain, switched = _module(cfg), _module(cfg, activation_checkpointing=True, compile=True)
    for name in ("student", "student_mtp"):
        assert getattr(plain, name).state_dict().keys() == getattr(switched, name).state_dict().keys()
    assert plain.state_dict().keys() == switched.state_dict().keys()
    switched.load_state_dict(plain.state_dict())
    assert not any(getattr(block, "gradient_checkpointing", False)
                   for block in decoder_blocks(switched.teacher.model, switched.teacher.mtp))


@pytest.mark.slow
def test_compiled_checkpointed_layers_give_the_eager_loss_and_gradients(setup):
    """torch.compile on every decoder block (Gated DeltaNet, attention, MTP; the teacher's too), with activation
    checkpointing, gives the eager loss and gradients within float tolerance (about 2 minutes of compiling on CPU)."""
    cfg, batch = setup
    plain_loss, plain_grads = _gradients(_module(cfg), batch)
    loss, grads = _gradients(_module(cfg, activation_checkpointing=True, compile=True), batch)
    difference = _max_difference(plain_grads, grads)
    print(f"loss {plain_loss} vs {loss}; max |grad difference| = {difference:.2e}")
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    assert difference < 1e-5


def test_compile_without_a_compiler_is_refused_before_work(monkeypatch: pytest.MonkeyPatch):
    """train.compile where inductor finds no C++ compiler fails in one line naming the field."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    with pytest.raises(UserError, match=r"^train.compile: torch.compile needs a C\+\+ compiler"):
        validate_train_config(TrainConfig(warmup_steps=1, compile=True))
    validate_train_config(TrainConfig(warmup_steps=1, compile=False))
