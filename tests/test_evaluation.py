"""`slim eval`: local lm-eval tasks, MTP acceptance rates, efficiency, and the CLI's summary and errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets.config
import huggingface_hub.constants
import pytest
import torch
from transformers import PreTrainedModel

from slim.harness.cli.main import main
from slim.harness.compression.scratch import reinitialize_
from slim.harness.config.schema import DataConfig, ModelConfig
from slim.harness.data.corpus import read_chapters, split_corpus
from slim.harness.errors import UserError
from slim.harness.evaluation.efficiency import CPU_MEMORY, Timings, efficiency_ratios, time_models
from slim.harness.evaluation.lm_eval_runner import check_tasks, go_offline, run_lm_eval, task_manager
from slim.harness.evaluation.local_tasks import BUILDERS, TASKS_DIR, write_local_tasks
from slim.harness.evaluation.mtp_acceptance import Drafter, acceptance_rates, greedy_continuation, mtp_drafter
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained
from slim.harness.models.mtp import build_mtp
from slim.harness.provenance import software

TEACHER = "assets/tiny-teacher"
LOCAL = list(BUILDERS)
MULTIPLE_CHOICE = ["kjv_cloze", "kjv_next_verse"]
LIMIT = 100


@pytest.fixture(scope="module")
def manager():
    return task_manager()


@pytest.fixture(scope="module")
def scores(manager) -> dict[str, dict[str, dict[str, float]]]:
    """lm-eval scores, LIMIT docs per task, of the shipped teacher on every local task and of a random-init model
    of its config on the multiple-choice ones (its exact-match is 0, and generating is the slow part)."""
    results = {}
    for name, tasks in (("teacher", LOCAL), ("random", MULTIPLE_CHOICE)):
        model, tokenizer = load_pretrained(TEACHER)
        if name == "random":
            reinitialize_(model, seed=0)
        results[name] = run_lm_eval(model, tokenizer, tasks, manager, LIMIT, batch_size=32)
    print(json.dumps(results, indent=1))
    return results


def test_shipped_task_files_rebuild_identically(tmp_path: Path) -> None:
    """The committed JSONL files are exactly what the seeded builder writes."""
    for path in write_local_tasks(DataConfig(), tmp_path):
        assert path.read_bytes() == (TASKS_DIR / path.name).read_bytes(), path.name


def test_local_tasks_use_heldout_text_only() -> None:
    """Every item is built from validation verses; no verse it shows also occurs in the train split."""
    split = split_corpus(read_chapters(DataConfig().path), DataConfig().heldout_every)
    validation = "\n".join(split.validation)
    train_verses = {verse for chapter in split.train for verse in chapter.split("\n")}
    for name in LOCAL:
        for line in (TASKS_DIR / f"{name}.jsonl").read_text().splitlines():
            item = json.loads(line)
            answer = item["target"] if "target" in item else item["choices"][item["label"]]
            verses = [item["context"], answer] if name == "kjv_next_verse" else [f"{item['context']} {answer}"]
            assert all(verse in validation and verse not in train_verses for verse in verses), (name, verses)


def test_teacher_above_chance_random_init_near_chance(scores) -> None:
    """4-way choice: the teacher is well above 0.25, its random-init twin near 0.25; the teacher completes some
    verses exactly."""
    teacher, random = scores["teacher"], scores["random"]
    assert teacher["kjv_cloze"]["acc"] > 0.5
    assert teacher["kjv_next_verse"]["acc_mutual_info"] > 0.4
    for task, metric in (("kjv_cloze", "acc"), ("kjv_next_verse", "acc_mutual_info")):
        assert 0.12 <= random[task][metric] <= 0.38, (task, random[task])
    assert teacher["kjv_complete"]["exact_match,strip"] >= 0.03


def test_unknown_task_name_suggests_close_ones(manager) -> None:
    """A typo in eval.tasks is one line naming the field and the close task names."""
    with pytest.raises(UserError, match=r"eval.tasks: unknown lm-eval task 'kjv_clozee'.*'kjv_cloze'"):
        check_tasks(["kjv_clozee"], manager)


def test_real_task_without_cached_data_fails_offline(manager, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real lm-eval task name passes through unchanged; offline without its dataset it fails at once, clearly."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "0")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    go_offline()
    with pytest.raises(UserError, match=r"eval.tasks: cannot load the data of task 'lambada_openai'"):
        check_tasks(["lambada_openai"], manager)


def tiny_model(mtp_layers: int) -> PreTrainedModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, hidden_size=64, num_hidden_layers=4, num_experts=8,
                         num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                         mtp_num_layers=mtp_layers)
    return build_model(config).eval()


def oracle_drafter(model: PreTrainedModel, num_draft: int, noise: float) -> Drafter:
    """Depth d at position i = the main head at position i+d (its own next greedy token), plus fixed per-position
    noise: noise 0 always agrees with the verifier."""
    table = noise * torch.randn(256, model.config.vocab_size, generator=torch.Generator().manual_seed(1))

    def draft(hidden: torch.Tensor, input_ids: torch.Tensor) -> list[torch.Tensor]:
        logits = model.lm_head(hidden)  # [B, T, V]
        return [logits[:, depth:] + table[: logits.shape[1] - depth] for depth in range(1, num_draft + 1)]

    return draft


@torch.no_grad()
def brute_force_rates(model: PreTrainedModel, drafter: Drafter, prompts: torch.Tensor, new_tokens: int,
                      num_draft: int) -> list[float]:
    """Speculative decoding played out: at every position, draft one token at a time from the prefix plus the
    drafts so far, verify each with a full forward of the backbone, stop at the first mismatch."""
    sequences = greedy_continuation(model, prompts, new_tokens)
    counts = []
    for row in sequences:
        for i in range(prompts.shape[1] - 1, row.numel() - num_draft):
            ids = row[: i + 2].unsqueeze(0)  # tokens 0..i+1: t_{i+1} is the verifier's own token
            for depth in range(1, num_draft + 1):
                hidden = model.model(input_ids=ids).last_hidden_state
                draft = drafter(hidden, ids)[depth - 1][0, i].argmax()
                if draft != model.lm_head(hidden[0, -1]).argmax():
                    break
                ids = torch.cat([ids, draft.view(1, 1)], dim=1)
            counts.append(ids.shape[1] - (i + 2))
    return [sum(count > j for count in counts) / len(counts) for j in range(num_draft)]


@pytest.mark.parametrize(("mtp_layers", "num_draft", "kind"), [(1, 3, "mtp"), (2, 2, "mtp"), (1, 3, "noisy_oracle")])
def test_acceptance_matches_brute_force_decoding(mtp_layers: int, num_draft: int, kind: str) -> None:
    """The one-pass teacher-forced rates equal a step-by-step speculative decoding loop (MTP layer reused
    beyond its depth; a noisy oracle gives rates strictly between 0 and 1)."""
    model = tiny_model(mtp_layers)
    if kind == "mtp":
        drafter = mtp_drafter(model, build_mtp(model).eval(), num_draft)
    else:
        drafter = oracle_drafter(model, num_draft, noise=0.03)
    prompts = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0))
    fast = acceptance_rates(model, drafter, prompts, 10, num_draft)
    assert fast == pytest.approx(brute_force_rates(model, drafter, prompts, 10, num_draft))
    assert all(a >= b for a, b in zip(fast, fast[1:]))
    if kind == "noisy_oracle":
        assert 0 < fast[-1] and fast[0] < 1


def test_drafter_copying_the_main_head_is_always_accepted() -> None:
    """A drafter that returns the main head's own next greedy tokens gets acc_j = 1 for every j."""
    model = tiny_model(1)
    prompts = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0))
    assert acceptance_rates(model, oracle_drafter(model, 4, noise=0.0), prompts, 12, 4) == [1.0] * 4


def test_efficiency_counts_weights_on_cpu() -> None:
    """Throughputs are positive and CPU peak memory includes at least the weights."""
    model = tiny_model(0)
    prompts = torch.zeros(1, 8, dtype=torch.long)
    result = time_models({"model": model}, prompts, new_tokens=4, repeats=1, warmup=0)["model"].efficiency(prompts, 4)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert result.prefill_tokens_per_s > 0 and result.decode_tokens_per_s > 0
    assert result.peak_memory_bytes >= weights and result.memory_method == CPU_MEMORY


class Recorder(torch.nn.Module):
    """A stand-in model that logs its prefills and generates."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        super().__init__()
        self.name, self.log = name, log
        self.weight = torch.nn.Parameter(torch.zeros(4))

    def forward(self, input_ids: torch.Tensor) -> None:
        self.log.append((self.name, "prefill"))

    def generate(self, prompts: torch.Tensor, **kwargs: object) -> None:
        self.log.append((self.name, "generate"))


def test_student_and_teacher_are_timed_round_by_round() -> None:
    """Each model's untimed runs (memory) first, alone; then every round times both prefills, then both
    generates, so load from other processes hits the two alike; training mode is restored."""
    log: list[tuple[str, str]] = []
    models = {"model": Recorder("model", log), "teacher": Recorder("teacher", log).eval()}
    timings = time_models(models, torch.zeros(1, 4, dtype=torch.long), new_tokens=3, repeats=2, warmup=1)
    one_round = [("model", "prefill"), ("teacher", "prefill"), ("model", "generate"), ("teacher", "generate")]
    assert log == [("model", "prefill"), ("model", "generate"), ("teacher", "prefill"), ("teacher", "generate"),
                   *one_round, *one_round]
    assert all(len(timing.prefill_s) == len(timing.generate_s) == 2 for timing in timings.values())
    assert models["model"].training and not models["teacher"].training


def test_speedups_are_paired_per_round_and_memory_is_a_plain_ratio() -> None:
    """Hand-computed: per round, teacher time over student time (decode = generate - prefill); the median is the
    reported speedup, min-max its spread; throughputs are means over rounds."""
    student = Timings(100, prefill_s=(1.0, 2.0, 1.0), generate_s=(3.0, 4.0, 2.0))  # decode 2, 2, 1
    teacher = Timings(400, prefill_s=(2.0, 2.0, 3.0), generate_s=(6.0, 5.0, 7.0))  # decode 4, 3, 4
    ratios, spread = efficiency_ratios(student, teacher)
    assert ratios == {"prefill_speedup": 2.0, "decode_speedup": 2.0, "memory_ratio": 0.25}
    assert spread == {"prefill_speedup": {"median": 2.0, "min": 1.0, "max": 3.0, "rounds": 3},
                      "decode_speedup": {"median": 2.0, "min": 1.5, "max": 4.0, "rounds": 3}}
    efficiency = student.efficiency(torch.zeros(2, 5, dtype=torch.long), new_tokens=3)
    assert efficiency.prefill_tokens_per_s == pytest.approx(10 / (4 / 3))
    assert efficiency.decode_tokens_per_s == pytest.approx(2 * 2 / (3 - 4 / 3))


def test_slim_eval_writes_summary(tmp_path: Path) -> None:
    """`slim eval` writes every section; the teacher (no MTP weights) reports no acceptance and says why."""
    code = main(["eval", f"run_dir={tmp_path}", "eval.tasks=[kjv_cloze]", "eval.limit=4", "eval.device=cpu",
                 "eval.perplexity_batches=1", "eval.batch_size=4", f"eval.teacher={TEACHER}",
                 "eval.efficiency.prompt_len=16", "eval.efficiency.new_tokens=4", "eval.efficiency.repeats=1",
                 "eval.efficiency.warmup=0"])
    assert code == 0
    summary = json.loads((tmp_path / "eval_summary.json").read_text())
    assert set(summary["lm_eval"]["kjv_cloze"]) == {"acc", "acc_norm"}
    assert 1 < summary["perplexity"] < 100
    assert summary["software"] == software()
    assert summary["expert_flops_saved"]["overall"] == 0.0  # a static MoE skips nothing
    assert len(summary["expert_flops_saved"]["per_layer"]) == 8  # the tiny teacher's 8 MoE layers
    assert summary["mtp_acceptance"]["acc"] is None and "no MTP weights" in summary["mtp_acceptance"]["note"]
    assert set(summary["efficiency"]["student_vs_teacher"]) == {"prefill_speedup", "decode_speedup", "memory_ratio"}
    spread = summary["efficiency"]["student_vs_teacher_spread"]
    assert set(spread) == {"prefill_speedup", "decode_speedup"} and all(s["rounds"] == 1 for s in spread.values())
    assert spread["decode_speedup"]["median"] == summary["efficiency"]["student_vs_teacher"]["decode_speedup"]
    assert summary["decode_cache"] == summary["efficiency"]["teacher_decode_cache"] == "transformers"


@pytest.mark.parametrize(("override", "message"), [
    ("eval.batch_size=0", "eval.batch_size: must be >= 1, got 0"),
    ("eval.mtp.num_draft_tokens=8", "eval.mtp.new_tokens: must exceed eval.mtp.num_draft_tokens (8), got 4"),
    ("eval.model=/nonexistent", "eval.model: no Hugging Face model directory at /nonexistent"),
    ("eval.device=tpu", "eval.device: must be auto, cpu, cuda or cuda:N, got 'tpu'"),
])
def test_bad_eval_config_is_one_line(override: str, message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Bad eval fields fail before any work with one line naming the field."""
    assert main(["eval", f"run_dir={tmp_path}", "eval.mtp.new_tokens=4", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_lm_eval_asks_git_quietly_outside_a_checkout(tmp_path, monkeypatch, capfd):
    """lm-eval records `git describe` of the working directory; outside a checkout the harness's stand-in returns
    None without git's "fatal: not a git repository" on stderr (lm-eval's own printed it on every slim eval)."""
    from slim.harness.evaluation.lm_eval_runner import _quiet_git_hash

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert _quiet_git_hash() is None
    assert "fatal" not in capfd.readouterr().err
