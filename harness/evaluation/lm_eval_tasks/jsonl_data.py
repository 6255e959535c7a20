"""lm-eval `custom_dataset` hook: read a task's JSONL file from this directory, whatever the working directory."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, DatasetDict


def load(data_file: str, **_metadata: object) -> DatasetDict:
    """The items of `data_file` (one JSON object per line) as the "test" split; lm-eval's metadata is ignored."""
    lines = (Path(__file__).resolve().parent / data_file).read_text(encoding="utf-8").splitlines()
    return DatasetDict({"test": Dataset.from_list([json.loads(line) for line in lines])})
