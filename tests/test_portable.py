"""Portable checkpoints (issue 14): every student and adapted model the harness writes loads, generates and runs the
lm_eval CLI in plain transformers without the harness, with the logits and tokens the harness's own model gives.

The clean client is a child Python started with `-I -S` outside the repository: it sees the installed site-packages
(transformers, lm-eval) but none of their .pth files, so the editable install of the harness is out of reach, and
the child checks that `import harness` fails before doing anything else.
"""

from __future__ import annotations

import ast
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from slim.harness.compression import compress as compress_module
from slim.harness.compression import modeling_slim
from slim.harness.config.load import load_config
from slim.harness.evaluation.local_tasks import TASKS_DIR
from slim.harness.models.expert_flops import count_expert_flops
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.methods.zeda import modeling_zeda
from slim.methods.zeda.inject import inject_zero_experts
from slim.methods.zeda.modeling_zeda import zero_expert_routers
from slim.methods.zeda.options import ZedaConfig
from tests.tiny_families import Teacher, make_teacher

# Name -> (teacher family, recipe): every family, and a global budget that leaves layers with different counts.
STUDENTS = {
    "global_budget": ("qwen3_next", ["compress.experts.num_experts=4", "compress.experts.budget=global",
                                     "compress.experts.min_per_layer=2", "compress.experts.criterion=reap"]),
    "qwen3_moe": ("qwen3_moe", ["compress.depth.num_drop=1", "compress.width.hidden_size=48",
                                "compress.experts.num_experts=4", "compress.experts.reducer=merge"]),
    "olmoe": ("olmoe", ["compress.depth.num_drop=1", "compress.experts.num_experts=4",
                        "compress.experts.reducer=partial_preserve"]),
    "mixtral": ("mixtral", ["compress.depth.num_drop=1", "compress.width.hidden_size=48",
                            "compress.experts.num_experts=4", "compress.experts.reducer=prune"]),
    # Issue 26's families; an exempt first MoE layer keeps all 8 experts, so those students are portable.
    "qwen3_5_moe_text": ("qwen3_5_moe_text", ["compress.depth.num_drop=1", "compress.width.hidden_size=48",
                                              "compress.experts.num_experts=4",
                                              "compress.experts.reducer=partial_preserve"]),
    "deepseek_v3": ("deepseek_v3", ["compress.depth.num_drop=1", "compress.width.hidden_size=48",
                                    "compress.experts.num_experts=4", "compress.experts.reducer=merge"]),
    "deepseek_v3_exempt": ("deepseek_v3", ["compress.experts.num_experts=4", "compress.experts.exempt_first=1",
                                           "compress.experts.reducer=prune"]),
    "glm4_moe": ("glm4_moe", ["compress.depth.num_drop=1", "compress.experts.num_experts=4",
                              "compress.experts.reducer=prune"]),
    "gpt_oss": ("gpt_oss", ["compress.depth.num_drop=1", "compress.width.hidden_size=48",
                            "compress.experts.num_experts=4", "compress.experts.reducer=merge"]),
    "gpt_oss_exempt": ("gpt_oss", ["compress.experts.num_experts=4", "compress.experts.exempt_first=1",
                                   "compress.experts.reducer=partial_preserve"]),
}
# The demo's pruned student: the shipped tiny teacher under the tiny recipe (what `make demo`'s Pruned cells train).
DEMO_RECIPE = "conf/recipes/tiny-slimqwen.yaml"
# Name -> the model ZEDA adapts: the original teacher, a global-budget student (both structures in one checkpoint),
# and a Mixtral student (a router without norm_topk_prob).
ZEDA_MODELS = {"zeda": ("teacher", "qwen3_next"), "zeda_global_budget": ("student", "global_budget"),
               "zeda_mixtral": ("student", "mixtral")}
PORTABLE = {"global_budget": "Slim", "zeda": "Zeda", "zeda_global_budget": "Zeda", "zeda_mixtral": "Zeda",
            "deepseek_v3_exempt": "Slim", "gpt_oss_exempt": "Slim"}
IDS = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(0))
PROMPT = "in the beginning god created the heaven"

# Runs first in every child: the installed packages without their .pth files (so no editable `slim` finder), and no
# harness among them. A clean venv of transformers and lm-eval lacks Gated DeltaNet's optional CUDA kernel packages
# too; installed here without a GPU, they would take every CPU tensor and fail, so the child does not import them.
CLEAN_PRELUDE = f"""
import sys
sys.path += {sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})!r}
sys.modules.update(fla=None, causal_conv1d=None)
try:
    __import__("slim.harness")
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("slim.harness is importable in the clean child")
"""

LOAD_AND_GENERATE = """
import json
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, dynamic_module_utils

PROMPT_TIMEOUT = dynamic_module_utils.TIME_OUT_REMOTE_CODE

jobs, ids_file, prompt, out_dir = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ids = torch.load(ids_file)
results = {}
for name, directory in jobs.items():
    # Without the flag transformers would ask the terminal on stdin; with its answer timeout at 0 it refuses at once.
    dynamic_module_utils.TIME_OUT_REMOTE_CODE = 0
    try:
        AutoModelForCausalLM.from_pretrained(directory)
        refused = None
    except Exception as error:
        refused = f"{type(error).__name__}: {error}"
    dynamic_module_utils.TIME_OUT_REMOTE_CODE = PROMPT_TIMEOUT
    model, info = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, output_loading_info=True)
    for tensor in model.parameters():  # out of the safetensors memory map: the CPU kernels the harness's copy sees
        tensor.data = tensor.data.clone()
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=True)
    with torch.no_grad():
        torch.save(model.eval()(input_ids=ids, use_cache=False).logits, f"{out_dir}/{name}.pt")
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
    generated = model.generate(prompt_ids, max_new_tokens=5, do_sample=False)
    results[name] = {"class": type(model).__name__, "refused_without_trust": refused, "prompt": prompt_ids.tolist(),
                     "generated": generated.tolist(), "loading_info": {k: sorted(map(str, v)) for k, v in info.items()}}
json.dump(results, open(f"{out_dir}/results.json", "w"))
"""

LM_EVAL_CLI = """
import json
from lm_eval.__main__ import cli_evaluate

jobs, tasks_dir, out_dir = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
for name, directory in jobs.items():
    sys.argv = ["lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={directory},trust_remote_code=True",
                "--tasks", "kjv_complete", "--include_path", tasks_dir, "--limit", "2", "--device", "cpu",
                "--batch_size", "1", "--output_path", f"{out_dir}/{name}"]
    cli_evaluate()
"""


# What transformers asks a terminal before it runs a directory's own code; nothing a user runs may ask it.
CUSTOM_CODE_PROMPT = "Do you wish to run the custom code?"


def run_clean(script: str, args: list[str], cwd: Path) -> None:
    """Run `script` in a child that cannot import the harness, with a bare environment, in `cwd`, and a terminal on
    its stdin as a user's would be: a prompt for custom code there would wait (transformers gives up after 15 s), so
    the child's output is checked for one."""
    (cwd / "child.py").write_text(CLEAN_PRELUDE + script)
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "HF_HOME": str(cwd / "hf"),
           "HF_MODULES_CACHE": str(cwd / "modules"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    terminal, terminal_side = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-I", "-S", "child.py", *args], cwd=cwd, env=env,
                                capture_output=True, text=True, stdin=terminal_side, timeout=900)
    finally:
        os.close(terminal_side)
        os.close(terminal)
    assert CUSTOM_CODE_PROMPT not in result.stdout + result.stderr, result.stdout[-2000:]
    assert result.returncode == 0, result.stderr[-4000:]


def _compress(cfg) -> torch.nn.Module:
    """`slim compress` on `cfg`; returns the student as the surgery left it in memory (the model it saved)."""
    saved = []

    def keep(model: torch.nn.Module, *args: object, **kwargs: object) -> Path:
        saved.append(model)
        return save_pretrained(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compress_module, "save_pretrained", keep)
        compress_module.compress(cfg)
    return saved[0].eval()


def _adapt(directory: Path, output: Path) -> tuple[Path, torch.nn.Module]:
    """ZEDA's injection on the model in `directory`, its zero columns perturbed so some tokens pick zero experts
    and others do not; saved to `output`. Returns the directory and the in-memory model."""
    model, tokenizer = load_pretrained(directory)
    inject_zero_experts(model, ZedaConfig(num_zero_experts=2))
    with torch.no_grad():
        for router in zero_expert_routers(model).values():
            router.zero_weight.add_(torch.randn(router.zero_weight.shape, generator=torch.Generator().manual_seed(2)))
    with count_expert_flops(model) as counts, torch.no_grad():
        model(input_ids=IDS, use_cache=False)
    assert 0 < counts.overall() < 1, "the zero experts must be picked by some tokens, not all"
    return save_pretrained(model, output, tokenizer=tokenizer), model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Name -> (directory, the harness's in-memory model: the student as surgery left it, the model ZEDA injected
    zero experts into) for every student, the demo's pruned student and every ZEDA model."""
    root = tmp_path_factory.mktemp("portable")
    teachers: dict[str, Teacher] = {}
    made: dict[str, tuple[Path, torch.nn.Module]] = {}
    for name, (family, recipe) in STUDENTS.items():
        if family not in teachers:
            teachers[family] = make_teacher(root, family, tokenizer_dir)
        made[name] = (root / name, _compress(teachers[family].recipe(root / name, *recipe)))
    demo = load_config([f"compress.output={root / 'demo_pruned'}", f"run_dir={root / 'demo_run'}",
                        "calibration.num_samples=16"], files=[DEMO_RECIPE])
    made["demo_pruned"] = (root / "demo_pruned", _compress(demo))
    for name, (kind, source) in ZEDA_MODELS.items():
        made[name] = _adapt(teachers[source].directory if kind == "teacher" else made[source][0], root / name)
    return made


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


def test_global_budget_and_zeda_checkpoints_name_their_own_architecture(models):
    """A structure the stock class cannot build gets its model type, architecture, auto_map and modeling files;
    the other students stay stock transformers checkpoints."""
    for name, (directory, model) in models.items():
        config = json.loads((directory / "config.json").read_text())
        stock = type(model).__name__
        if name not in PORTABLE:
            assert config["architectures"] == [stock] and "auto_map" not in config
            assert not list(directory.glob("modeling_*.py"))
            continue
        prefix, family = PORTABLE[name], model.config.model_type
        module = "modeling_slim" if prefix == "Slim" else "modeling_zeda"
        assert config["model_type"] == f"{prefix.lower()}_{family}" and config["architectures"] == [prefix + stock]
        assert config["auto_map"] == {"AutoConfig": f"{module}.{prefix}{type(model.config).__name__}",
                                      "AutoModelForCausalLM": f"{module}.{prefix}{stock}"}
        assert (directory / "modeling_slim.py").is_file() and (directory / f"{module}.py").is_file()
    assert "num_experts_per_layer" in json.loads((models["global_budget"][0] / "config.json").read_text())


def test_harness_reloads_portable_models_with_their_logits(models, monkeypatch):
    """load_pretrained reads a portable directory back as its family: same structure, bit-identical logits, and
    never stops to ask on stdin whether to run its modeling file (a ZEDA grid cell waited on that prompt)."""
    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "N")
    for name in PORTABLE:
        directory, model = models[name]
        reloaded, tokenizer = load_pretrained(directory)
        assert tokenizer is not None and reloaded.config.model_type == model.config.model_type
        assert torch.equal(_logits(reloaded), _logits(model)), name
    assert len(zero_expert_routers(load_pretrained(models["zeda_global_budget"][0])[0])) == 4
    assert asked == []


@pytest.mark.parametrize("path", [Path(modeling_slim.__file__), Path(modeling_zeda.__file__)], ids=lambda p: p.name)
def test_modeling_files_import_only_torch_and_transformers(path: Path):
    """A portable checkpoint's modeling code needs no harness: torch, transformers, the standard library and its
    sibling modeling_slim.py."""
    allowed = {"__future__", "collections", "copy", "typing", "torch", "transformers"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            assert {alias.name.split(".")[0] for alias in node.names} <= allowed, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.module.split(".")[0] in allowed or (node.level == 1 and node.module == "modeling_slim"), \
                ast.unparse(node)


@pytest.fixture(scope="module")
def plain(models, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], Path]:
    """Every model loaded, run and greedily decoded by plain transformers in a child without the harness: its
    report per model and the directory of its logits."""
    out = tmp_path_factory.mktemp("plain")
    torch.save(IDS, out / "ids.pt")
    jobs = {name: str(directory) for name, (directory, _) in models.items()}
    run_clean(LOAD_AND_GENERATE, [json.dumps(jobs), str(out / "ids.pt"), PROMPT, str(out)], out)
    return json.loads((out / "results.json").read_text()), out


def test_portable_models_are_refused_without_trust_remote_code(plain):
    """Plain transformers refuses a portable directory without trust_remote_code instead of dropping weights."""
    results, _ = plain
    for name in PORTABLE:
        assert "trust_remote_code" in results[name]["refused_without_trust"], (name, results[name])


TOKENIZER_WITHOUT_FLAG = """
from transformers import AutoTokenizer, dynamic_module_utils

dynamic_module_utils.TIME_OUT_REMOTE_CODE = 1  # the prompt is printed, then given up on after 1 s
AutoTokenizer.from_pretrained(sys.argv[1])
"""


def test_a_custom_code_prompt_on_the_terminal_fails_the_clean_child(models, tmp_path):
    """The check that no line above asks the terminal can fail: the tokenizer line without `trust_remote_code` on a
    portable student asks (transformers reads config.json, and its auto_map, before the tokenizer files), which is
    why the README and `slim compress` print the tokenizer line with the flag."""
    with pytest.raises(AssertionError, match=re.escape(CUSTOM_CODE_PROMPT)):
        run_clean(TOKENIZER_WITHOUT_FLAG, [str(models["global_budget"][0])], tmp_path)


def test_plain_transformers_builds_every_model_with_all_its_weights(models, plain):
    """With trust_remote_code a portable directory builds `<Prefix><Stock>`, the others their stock class (they
    load without it too); no tensor is missing, unexpected or mis-sized."""
    results, _ = plain
    for name, (_, model) in models.items():
        result = results[name]
        assert result["class"] == PORTABLE.get(name, "") + type(model).__name__, name
        assert (result["refused_without_trust"] is None) is (name not in PORTABLE), name
        assert not any(result["loading_info"].values()), (name, result["loading_info"])


def test_plain_transformers_logits_equal_the_harness_models(models, plain):
    """Logits of the model plain transformers loads equal those of the harness's in-memory model, bit for bit."""
    _, out = plain
    for name, (_, model) in models.items():
        assert torch.equal(torch.load(out / f"{name}.pt"), _logits(model)), name


def test_the_harness_load_agrees_with_plain_transformers_within_5e_6(models, plain):
    """`load_pretrained` copies the weights out of the safetensors memory map, plain transformers computes from the
    map itself; on CPU the two alignments can take different vectorized paths, so the harness's logits of a saved
    directory agree with plain transformers' within 5e-6 (measured 1.9e-6 to 4.3e-6 on Qwen3-Next-family students,
    0.0 on the others), not bit for bit; greedy tokens agree (the test below)."""
    _, out = plain
    for name, (directory, _) in models.items():
        loaded, _ = load_pretrained(directory)
        torch.testing.assert_close(_logits(loaded), torch.load(out / f"{name}.pt"), atol=5e-6, rtol=0, msg=name)


def test_plain_transformers_generates_the_harness_models_tokens(models, plain):
    """Greedy generate() with the cache gives the harness model's tokens, 5 new ones each."""
    results, _ = plain
    for name, (_, model) in models.items():
        prompt = torch.tensor(results[name]["prompt"])
        harness_tokens = model.generate(prompt, max_new_tokens=5, do_sample=False)
        assert results[name]["generated"] == harness_tokens.tolist(), name
        assert len(results[name]["generated"][0]) == prompt.shape[1] + 5, name


@pytest.mark.slow
def test_lm_eval_cli_runs_a_local_task_on_every_model(models, tmp_path):
    """`lm_eval run --model hf --model_args pretrained=DIR,trust_remote_code=True` scores kjv_complete on each model,
    without the harness."""
    tasks = shutil.copytree(TASKS_DIR, tmp_path / "tasks")
    jobs = {name: str(directory) for name, (directory, _) in models.items()}
    run_clean(LM_EVAL_CLI, [json.dumps(jobs), str(tasks), str(tmp_path / "out")], tmp_path)
    for name in jobs:
        [results_file] = (tmp_path / "out" / name).rglob("results_*.json")
        scores = json.loads(results_file.read_text())["results"]["kjv_complete"]
        assert 0 <= scores["exact_match,strip"] <= 1, name
