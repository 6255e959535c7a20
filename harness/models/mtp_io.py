"""MTP weights on disk: the one reader and writer that every loader of MTP weights goes through.

Released layout (Qwen/Qwen3-Next-80B-A3B; what vLLM's `qwen3_next_mtp.py` loads for MTP speculative decoding):
config.json `mtp_num_hidden_layers`, tensors named `mtp.*` inside the model's safetensors files (listed in
`model.safetensors.index.json` when sharded; transformers drops them on load, `_keys_to_ignore_on_load_unexpected`).
vLLM computes fc(cat[pre_fc_norm_embedding(Emb(t)), pre_fc_norm_hidden(h)]): embedding first, while eq 9 (the
harness's documented reading, slim.harness.models.mtp) concatenates [hidden; embedding]. The fc weight's two column
blocks are therefore swapped between the layouts, which gives the same function. Released name -> harness name:

    mtp.fc.weight [d, 2d] (columns: embedding | hidden)   layers.0.eh_proj.weight [d, 2d] (columns: hidden | embedding)
    mtp.pre_fc_norm_hidden.weight [d]                     layers.0.hnorm.weight
    mtp.pre_fc_norm_embedding.weight [d]                  layers.0.enorm.weight
    mtp.norm.weight [d]                                   layers.0.norm.weight
    mtp.layers.0.<name>                                   layers.0.block.<name> (the decoder layer, same names), except
    mtp.layers.0.mlp.experts.<e>.gate_proj.weight [I, d]  layers.0.block.mlp.experts.gate_up_proj[e, :I]
    mtp.layers.0.mlp.experts.<e>.up_proj.weight [I, d]    layers.0.block.mlp.experts.gate_up_proj[e, I:]
    mtp.layers.0.mlp.experts.<e>.down_proj.weight [d, I]  layers.0.block.mlp.experts.down_proj[e]

(the expert packing is transformers' own for these families: MergeModulelist then Concatenate, gate rows first).
The released layout has one fc and one set of norms shared by all its `mtp.layers`, while eq 9 gives every depth
its own M_k: it holds a harness MTP module of depth 1 exactly, and only depth 1 is read or written in it.
Harness layout (written before, and still for D > 1): `mtp.safetensors` holding `mtp.` + MTPModule state-dict names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from slim.harness.errors import UserError
from slim.harness.models.mtp import DEPTH_KEY, LEGACY_DEPTH_KEY, PREFIX, MTPModule, construct_mtp, mtp_depth

HARNESS_FILE = "mtp.safetensors"  # the harness layout
MTP_SHARD = "model-mtp.safetensors"  # the extra safetensors file `save_mtp` writes the released layout to
INDEX_FILE = "model.safetensors.index.json"
# Released local name (after `mtp.`) -> MTPModule name, for the depth's own parameters other than fc.
RELEASED_OWN = {
    "pre_fc_norm_hidden.weight": "layers.0.hnorm.weight",
    "pre_fc_norm_embedding.weight": "layers.0.enorm.weight",
    "norm.weight": "layers.0.norm.weight",
}
RELEASED_BLOCK = "layers.0."
HARNESS_BLOCK = "layers.0.block."
EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight")
GATE_UP, DOWN = "mlp.experts.gate_up_proj", "mlp.experts.down_proj"


def _swap_halves(fc: torch.Tensor) -> torch.Tensor:
    """[d, 2d] with its two column blocks swapped: released [emb | hidden] <-> eq 9 [hidden | emb] (an involution)."""
    emb_or_hidden, other = fc.chunk(2, dim=1)
    return torch.cat([other, emb_or_hidden], dim=1)


def _pack_experts(per_expert: dict[tuple[int, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert gate/up [I, d] and down [d, I] -> packed gate_up_proj [E, 2I, d] and down_proj [E, d, I]."""
    num_experts = 1 + max(expert for expert, _ in per_expert)
    experts = range(num_experts)
    return {
        GATE_UP: torch.stack([torch.cat([per_expert[e, "gate"], per_expert[e, "up"]]) for e in experts]),
        DOWN: torch.stack([per_expert[e, "down"] for e in experts]),
    }


def from_released(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released `mtp.*` tensors (depth 1) -> the MTPModule state dict, by the table in the module docstring.
    Names outside the table keep their released name, so a strict load reports them."""
    state, per_expert = {}, {}
    for name, tensor in tensors.items():
        local = name.removeprefix(PREFIX)
        block_local = local.removeprefix(RELEASED_BLOCK)
        if local == "fc.weight":
            state["layers.0.eh_proj.weight"] = _swap_halves(tensor)
        elif local in RELEASED_OWN:
            state[RELEASED_OWN[local]] = tensor
        elif match := EXPERT.fullmatch(block_local):
            per_expert[int(match[1]), match[2]] = tensor
        elif local.startswith(RELEASED_BLOCK):
            state[HARNESS_BLOCK + block_local] = tensor
        else:
            state[name] = tensor
    if per_expert:
        state.update({HARNESS_BLOCK + name: packed for name, packed in _pack_experts(per_expert).items()})
    return state


def to_released(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A depth-1 MTPModule state dict -> released `mtp.*` tensors (the inverse of `from_released`)."""
    own = {harness: released for released, harness in RELEASED_OWN.items()}
    tensors = {}
    for name, tensor in state.items():
        block_local = name.removeprefix(HARNESS_BLOCK)
        if name == "layers.0.eh_proj.weight":
            tensors[PREFIX + "fc.weight"] = _swap_halves(tensor)
        elif name in own:
            tensors[PREFIX + own[name]] = tensor
        elif block_local == GATE_UP:
            gates, ups = tensor.chunk(2, dim=1)  # [E, I, d] each
            for expert in range(len(gates)):
                tensors[f"{PREFIX}{RELEASED_BLOCK}mlp.experts.{expert}.gate_proj.weight"] = gates[expert]
                tensors[f"{PREFIX}{RELEASED_BLOCK}mlp.experts.{expert}.up_proj.weight"] = ups[expert]
        elif block_local == DOWN:
            for expert, down in enumerate(tensor):
                tensors[f"{PREFIX}{RELEASED_BLOCK}mlp.experts.{expert}.down_proj.weight"] = down
        else:
            assert name.startswith(HARNESS_BLOCK), f"depth-1 MTP parameter outside the released table: {name}"
            tensors[PREFIX + RELEASED_BLOCK + block_local] = tensor
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}


def _keys(file: Path) -> list[str]:
    """Tensor names in a safetensors header; one-line UserError naming an unreadable file."""
    try:
        with safe_open(file, framework="pt") as handle:
            return list(handle.keys())
    except Exception as error:  # safetensors raises its own error type for every corruption
        raise UserError(f"checkpoint {file}: unreadable weights ({error})") from error


def _released_files(directory: Path) -> dict[str, Path]:
    """Released `mtp.*` tensor name -> the safetensors file holding it: from the index when the checkpoint is
    sharded, else from the headers of its *.safetensors files (the harness-layout file excluded)."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return {name: directory / file for name, file in weight_map.items() if name.startswith(PREFIX)}
    files = sorted(file for file in directory.glob("*.safetensors") if file.name != HARNESS_FILE)
    return {name: file for file in files for name in _keys(file) if name.startswith(PREFIX)}


def has_mtp_weights(directory: str | Path) -> bool:
    """Whether model directory `directory` holds MTP weights, in either layout."""
    directory = Path(directory)
    return (directory / HARNESS_FILE).is_file() or bool(_released_files(directory))


def _read_released(names: dict[str, Path]) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(set(names.values())):
        try:
            with safe_open(file, framework="pt") as handle:
                tensors.update({name: handle.get_tensor(name) for name in names if names[name] == file})
        except Exception as error:  # a missing shard or a name the index lists but the file lacks included
            raise UserError(f"checkpoint {file}: unreadable MTP weights ({error})") from error
    return tensors


def read_mtp_state(directory: str | Path, depth: int) -> dict[str, torch.Tensor]:
    """The MTPModule state dict of a depth-`depth` MTP saved in `directory`, from whichever layout it has."""
    directory = Path(directory)
    harness_file = directory / HARNESS_FILE
    if harness_file.is_file():
        try:
            saved = load_file(harness_file)
        except Exception as error:  # safetensors raises its own error type for every corruption
            raise UserError(f"checkpoint {harness_file}: unreadable MTP weights ({error})") from error
        return {name.removeprefix(PREFIX): tensor for name, tensor in saved.items() if name.startswith(PREFIX)}
    names = _released_files(directory)
    if not names:
        raise UserError(f"checkpoint {directory}: no MTP weights (no {HARNESS_FILE}, no mtp.* tensors in its "
                        f"safetensors files), but config.json has MTP depth {depth}")
    if depth != 1:
        raise UserError(f"checkpoint {directory}: {DEPTH_KEY}={depth} in the released mtp.* layout, which shares "
                        "one fc across its layers; the harness MTP (eq 9) has one per depth, so only depth 1 maps")
    return from_released(_read_released(names))


def load_mtp(model: PreTrainedModel, directory: str | Path) -> MTPModule | None:
    """The MTP module saved beside `model`'s weights in `directory` (either layout), on the model's device;
    None when the config has no MTP depth. A depth without weights is an error: see `find_mtp`."""
    depth = mtp_depth(model)
    if depth == 0:
        return None
    # Cloned: tensors of a loaded file sit at unaligned offsets, where CPU matmuls round differently (~1e-8),
    # and the reloaded logits should equal the saved module's bit for bit.
    state = {name: tensor.clone() for name, tensor in read_mtp_state(directory, depth).items()}
    mtp = construct_mtp(model, "meta")
    try:
        mtp.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise UserError(f"checkpoint {directory}: MTP weights do not fit config.json ({detail})") from error
    return mtp.to(model.get_input_embeddings().weight.device)


def find_mtp(model: PreTrainedModel, directory: str | Path) -> MTPModule | None:
    """`load_mtp`, or None when `directory` holds no MTP weights (a teacher pretrained without an MTP module)."""
    return load_mtp(model, directory) if has_mtp_weights(directory) else None


def _register_in_index(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """List the MTP shard's tensors in a sharded checkpoint's index, as serving engines load the files it names."""
    index_file = directory / INDEX_FILE
    if not index_file.is_file():
        return  # one model.safetensors: transformers loads it alone, engines glob every *.safetensors
    index = json.loads(index_file.read_text())
    index.setdefault("weight_map", {}).update({name: MTP_SHARD for name in tensors})
    metadata = index.setdefault("metadata", {})
    if "total_size" in metadata:
        metadata["total_size"] += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True))


def _record_depth(directory: Path, depth: int) -> None:
    """config.json carries the depth under the released key only."""
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config.pop(LEGACY_DEPTH_KEY, None)
    config[DEPTH_KEY] = depth
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_mtp(mtp: MTPModule, directory: str | Path) -> Path:
    """Write `mtp` beside the model saved in `directory` (use as io.save_pretrained's `extras`) and record its
    depth in config.json: depth 1 in the released layout (`model-mtp.safetensors`, listed in the index when the
    checkpoint is sharded), deeper modules in the harness layout (`mtp.safetensors`). Returns the file written."""
    directory = Path(directory)
    depth = len(mtp.layers)
    state = mtp.state_dict()
    if depth == 1:
        tensors, path = to_released(state), directory / MTP_SHARD
        _register_in_index(directory, tensors)
    else:
        tensors = {PREFIX + name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
        path = directory / HARNESS_FILE
    save_file(tensors, path, metadata={"format": "pt"})
    _record_depth(directory, depth)
    return path
