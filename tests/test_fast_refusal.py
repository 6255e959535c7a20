"""A config refused at load answers before torch, Lightning, transformers or lm-eval is imported (its latency is
measured in bench/cli_latency.py, not timed here): method names are checked against the declared entry points,
ranges and choices against the schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.corpora import ROOT

HEAVY = ("torch", "lightning", "transformers", "lm_eval")
PROBE = """
import json, sys
from slim.harness.cli.main import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "imported": [name for name in %r if name in sys.modules]}))
""" % (HEAVY,)

REFUSALS = {
    "a misspelt criterion": (["compress", "conf/recipes/tiny-slimqwen.yaml", "compress.experts.criterion=reapp"],
                             "compress.experts.criterion: unknown expert criterion 'reapp' (did you mean 'reap'?)"),
    "a negative learning rate": (["run", "conf/recipes/tiny-slimqwen.yaml", "train.lr=-1"],
                                 "train.lr: must be > 0, got -1.0"),
    "an unknown key": (["distill", "distill.lr=3"], "unknown config key 'distill.lr'"),
    "no tokenizer processes": (["prepare-data", "data.num_proc=0"], "data.num_proc: must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_config_is_refused_before_any_heavy_import(case):
    argv, message = REFUSALS[case]
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"status": 2, "imported": []}, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"slim {argv[0]}: error: ") and message in lines[0], lines
