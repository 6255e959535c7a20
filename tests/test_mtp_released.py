"""The released Qwen3-Next MTP layout: a checkpoint written here the way Qwen ships it (config
`mtp_num_hidden_layers`, `mtp.*` tensors inside the model's safetensors shards, names as vLLM's
qwen3_next_mtp.py loads them) loads its MTP, gives real MTP-KD targets, and survives compress and distill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from slim.harness.cli.main import main
from slim.harness.config.load import load_config
from slim.harness.data.packing import build_corpus_data
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained
from slim.harness.models.mtp import build_mtp, run_mtp
from slim.harness.models.mtp_io import HARNESS_FILE, INDEX_FILE, MTP_SHARD, from_released, load_mtp, save_mtp
from slim.harness.models.view import view
from slim.harness.training.distill_module import DistillModule, load_teacher
from tests.conftest import TINY_OVERRIDES

WIDTH, EXPERTS, INTERMEDIATE = 64, 8, 32
SHAPE = ["model.num_hidden_layers=4", f"model.hidden_size={WIDTH}", f"model.num_experts={EXPERTS}",
         "model.num_experts_per_tok=2", f"model.moe_intermediate_size={INTERMEDIATE}",
         "model.shared_expert_intermediate_size=64", "model.mtp_num_layers=0"]
FULL_ATTENTION_LAYER = 3  # tiny preset: every 4th layer is full attention, like the MTP block
IDS = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(0))


def released_mtp_tensors(backbone_file_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Random `mtp.*` tensors named and shaped as in Qwen3-Next-80B-A3B: fc, the two pre-fc norms, the output norm
    and one full-attention MoE decoder layer under `mtp.layers.0.` (experts unpacked, as the backbone's on disk)."""
    generator = torch.Generator().manual_seed(7)
    prefix = f"model.layers.{FULL_ATTENTION_LAYER}."
    shapes = {"mtp.layers.0." + name.removeprefix(prefix): tensor.shape
              for name, tensor in backbone_file_tensors.items() if name.startswith(prefix)}
    shapes.update({"mtp.fc.weight": (WIDTH, 2 * WIDTH), "mtp.pre_fc_norm_hidden.weight": (WIDTH,),
                   "mtp.pre_fc_norm_embedding.weight": (WIDTH,), "mtp.norm.weight": (WIDTH,)})
    return {name: 0.05 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A sharded tiny Qwen3-Next checkpoint in the released layout: its last shard also holds the mtp.* tensors,
    the index lists them, config.json says mtp_num_hidden_layers=1. Returns the directory and those tensors."""
    directory = tmp_path_factory.mktemp("released") / "Qwen3-Next-tiny"
    cfg = load_config([*TINY_OVERRIDES, *SHAPE, f"data.tokenizer={tokenizer_dir}"])
    build_corpus_data(cfg.data).tokenizer.save_pretrained(directory)
    build_model(cfg.model, seed=0).save_pretrained(directory, max_shard_size="200KB")
    index = json.loads((directory / INDEX_FILE).read_text())
    last_shard = sorted(set(index["weight_map"].values()))[-1]
    backbone = {name: tensor for file in set(index["weight_map"].values()) for name, tensor in
                load_file(directory / file).items()}
    mtp = released_mtp_tensors(backbone)
    save_file({**load_file(directory / last_shard), **mtp}, directory / last_shard, metadata={"format": "pt"})
    index["weight_map"].update({name: last_shard for name in mtp})
    (directory / INDEX_FILE).write_text(json.dumps(index))
    config = json.loads((directory / "config.json").read_text())
    config.pop("mtp_num_layers", None)
    (directory / "config.json").write_text(json.dumps({**config, "mtp_num_hidden_layers": 1}))
    return directory, mtp


def test_released_mtp_loads_with_the_files_weights(released):
    """Every MTP parameter equals its released tensor: norms by name, fc with its [embedding | hidden] column
    blocks swapped into eq 9's [hidden | embedding] order, experts packed gate rows first."""
    directory, file = released
    model, _ = load_pretrained(directory)
    layer = load_mtp(model, directory).layers[0]
    fc = file["mtp.fc.weight"]
    assert torch.equal(layer.eh_proj.weight, torch.cat([fc[:, WIDTH:], fc[:, :WIDTH]], dim=1))
    assert torch.equal(layer.hnorm.weight, file["mtp.pre_fc_norm_hidden.weight"])
    assert torch.equal(layer.enorm.weight, file["mtp.pre_fc_norm_embedding.weight"])
    assert torch.equal(layer.norm.weight, file["mtp.norm.weight"])
    experts = layer.block.mlp.experts
    for e in range(EXPERTS):
        expert = f"mtp.layers.0.mlp.experts.{e}."
        assert torch.equal(experts.gate_up_proj[e], torch.cat([file[expert + "gate_proj.weight"],
                                                               file[expert + "up_proj.weight"]]))
        assert torch.equal(experts.down_proj[e], file[expert + "down_proj.weight"])
    for name, param in layer.block.named_parameters():
        if not name.startswith("mlp.experts."):
            assert torch.equal(param, file["mtp.layers.0." + name]), name


def test_projection_matches_vllm_order(released):
    """eh_proj on eq 9's [RMSNorm(h); RMSNorm(e)] equals vLLM's fc(cat[pre_fc_norm_embedding(e),
    pre_fc_norm_hidden(h)]) computed from the file's tensors."""
    directory, file = released
    model, _ = load_pretrained(directory)
    layer = load_mtp(model, directory).layers[0]
    norm_class = type(view(model).final_norm)
    norms = {}
    for which in ("hidden", "embedding"):
        norms[which] = norm_class(WIDTH, eps=model.config.rms_norm_eps)
        norms[which].weight.data.copy_(file[f"mtp.pre_fc_norm_{which}.weight"])
    hidden, embeds = torch.randn(2, 5, WIDTH), torch.randn(2, 5, WIDTH)
    with torch.no_grad():
        ours = layer.eh_proj(torch.cat([layer.hnorm(hidden), layer.enorm(embeds)], dim=-1))
        vllm = F.linear(torch.cat([norms["embedding"](embeds), norms["hidden"](hidden)], dim=-1), file["mtp.fc.weight"])
    torch.testing.assert_close(ours, vllm)


def test_expert_packing_is_transformers_own(released):
    """`from_released` packs a layer's per-expert tensors exactly as transformers packed the backbone's on load."""
    directory, _ = released
    model, _ = load_pretrained(directory)
    index = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
    prefix = f"model.layers.{FULL_ATTENTION_LAYER}.mlp.experts."
    on_disk = {}
    for name, file in index.items():
        if name.startswith(prefix):
            with safe_open(directory / file, framework="pt") as handle:
                on_disk["mtp.layers.0.mlp.experts." + name.removeprefix(prefix)] = handle.get_tensor(name)
    packed = from_released(on_disk)
    loaded = model.model.layers[FULL_ATTENTION_LAYER].mlp.experts
    assert torch.equal(packed["layers.0.block.mlp.experts.gate_up_proj"], loaded.gate_up_proj)
    assert torch.equal(packed["layers.0.block.mlp.experts.down_proj"], loaded.down_proj)


def test_mtp_kd_targets_come_from_the_released_module(released):
    """A student equal to the released teacher has MTP-KD 0, and the teacher's MTP predicts differently from a
    fresh init: the targets are the checkpoint's, not random."""
    directory, _ = released
    cfg = load_config([f"distill.teacher={directory}", f"distill.student={directory}", "distill.loss=kd+mtp_kd"])
    module = DistillModule(cfg.distill, cfg.train)
    module.configure_model()
    with torch.no_grad():
        terms = module.step_loss({"input_ids": IDS, "labels": torch.roll(IDS, -1, dims=1)}).terms
    assert terms["mtp_kd"].item() == pytest.approx(0.0, abs=1e-6)
    teacher = load_teacher(directory)
    torch.manual_seed(0)
    fresh = build_mtp(teacher.model).eval()
    with torch.no_grad():
        hidden = teacher.model.model(input_ids=IDS, use_cache=False).last_hidden_state
        released_logits = run_mtp(teacher.model, teacher.mtp, hidden, IDS)[0]
        fresh_logits = run_mtp(teacher.model, fresh, hidden, IDS)[0]
    assert (released_logits - fresh_logits).abs().max() > 1e-2


def test_save_mtp_into_a_sharded_checkpoint_lists_it_in_the_index(released, tmp_path):
    """A depth-1 MTP saved beside sharded weights goes to its own file, which the index lists under the released
    names; transformers still loads the model, and the MTP reloads bit for bit."""
    directory, _ = released
    model, _ = load_pretrained(directory)
    mtp = load_mtp(model, directory)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    save_mtp(mtp, tmp_path)
    weight_map = json.loads((tmp_path / INDEX_FILE).read_text())["weight_map"]
    assert (weight_map["mtp.fc.weight"] == MTP_SHARD
            and weight_map["mtp.layers.0.mlp.experts.7.up_proj.weight"] == MTP_SHARD)
    assert json.loads((tmp_path / "config.json").read_text())["mtp_num_hidden_layers"] == 1
    reloaded, _ = load_pretrained(tmp_path)
    for (name, old), new in zip(mtp.state_dict().items(), load_mtp(reloaded, tmp_path).state_dict().values()):
        assert torch.equal(old, new), name


def released_layout(directory: Path, num_experts: int) -> tuple[dict, set[str]]:
    """(config.json, the mtp.* names in `directory`'s MTP shard); asserts there is no harness-layout file."""
    assert not (directory / HARNESS_FILE).exists()
    with safe_open(directory / MTP_SHARD, framework="pt") as handle:
        names = set(handle.keys())
    experts = {f"mtp.layers.0.mlp.experts.{e}.{proj}_proj.weight" for e in range(num_experts)
               for proj in ("gate", "up", "down")}
    assert experts <= names and not any(".experts.gate_up_proj" in name for name in names)
    assert {"mtp.fc.weight", "mtp.pre_fc_norm_hidden.weight", "mtp.pre_fc_norm_embedding.weight",
            "mtp.norm.weight", "mtp.layers.0.self_attn.q_proj.weight"} <= names
    return json.loads((directory / "config.json").read_text()), names


def test_compress_and_distill_round_trip_in_the_released_layout(released, tokenizer_dir, tmp_path):
    """`slim compress` then `slim distill` (loss=full, no longer refused) from the released teacher: each student
    directory holds its MTP in the released layout (names, mtp_num_hidden_layers) at the student's shape."""
    directory, file = released
    common = [*TINY_OVERRIDES, f"data.tokenizer={tokenizer_dir}", f"run_dir={tmp_path / 'run'}"]
    student, distilled = tmp_path / "student", tmp_path / "distilled"
    assert main(["compress", *common, f"compress.teacher={directory}", f"compress.output={student}",
                 "compress.depth.num_drop=1", "compress.depth.allow_no_attention=true", "compress.width.hidden_size=48",
                 "compress.experts.num_experts=4",
                 "compress.experts.top_k=1", "calibration.num_samples=8", "calibration.batch_size=4",
                 "calibration.probe_tokens=64"]) == 0
    config, names = released_layout(student, num_experts=4)
    assert config["mtp_num_hidden_layers"] == 1 and "mtp_num_layers" not in config
    assert names == {name for name in file if ".experts." not in name} | {
        name for name in file if any(f".experts.{e}." in name for e in range(4))}
    with safe_open(student / MTP_SHARD, framework="pt") as handle:
        assert handle.get_slice("mtp.fc.weight").get_shape() == [48, 96]
    assert main(["distill", *common, f"distill.teacher={directory}", f"distill.student={student}",
                 f"distill.output={distilled}", "distill.loss=full", "train.max_steps=2", "train.batch_size=4",
                 "train.warmup_steps=1", "train.val_every=2", "train.val_batches=1"]) == 0
    config, distilled_names = released_layout(distilled, num_experts=4)
    assert config["mtp_num_hidden_layers"] == 1 and distilled_names == names
    trained, before = load_file(distilled / MTP_SHARD), load_file(student / MTP_SHARD)
    assert not torch.equal(trained["mtp.fc.weight"], before["mtp.fc.weight"])
