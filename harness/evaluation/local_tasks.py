"""Local lm-eval tasks built from the held-out (validation) chapters, so lm-eval has real work offline.

Three tasks, each a JSONL file beside its shipped YAML in `lm_eval_tasks/`:
- `kjv_cloze`: a verse without its last CLOZE_WORDS words; pick its ending among 4 (3 from other verses).
- `kjv_next_verse`: a verse; pick the verse that follows it in its chapter among 4 (3 from other chapters).
- `kjv_complete`: a verse without its last COMPLETE_WORDS words; greedy generation until newline must
  reproduce them exactly.
Only validation chapters are used, minus verses the train split repeats word for word, and the draw is
seeded, so rebuilding gives identical files: `python -m slim.harness.evaluation.local_tasks` rewrites them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from slim.harness.config.schema import DataConfig
from slim.harness.data.corpus import read_chapters, split_corpus

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
LOCAL_TASKS = ("kjv_cloze", "kjv_next_verse", "kjv_complete")
TASK_TAG = "kjv"
NUM_CHOICES = 4
CLOZE_WORDS = 2
COMPLETE_WORDS = 1
MIN_WORDS = 8
NUM_ITEMS = 300
SEED = 1234


@dataclass
class HeldOut:
    """Verses of every validation chapter, and the train split's verses: the KJV repeats ~2% of its verses
    word for word elsewhere (Ezra 2 / Nehemiah 7, ...), and those must not become items."""

    chapters: list[list[str]]
    train_verses: set[str]

    def usable(self, *verses: str) -> bool:
        return all(len(verse.split(" ")) >= MIN_WORDS and verse not in self.train_verses for verse in verses)


def heldout(data: DataConfig) -> HeldOut:
    """The held-out text of the corpus split that `data` describes (the split the teacher never trained on)."""
    split = split_corpus(read_chapters(data.path), data.heldout_every)
    train_verses = {verse for chapter in split.train for verse in chapter.split("\n")}
    return HeldOut([chapter.split("\n") for chapter in split.validation], train_verses)


def _head_tail(verse: str, num_words: int) -> tuple[str, str]:
    words = verse.split(" ")
    return " ".join(words[:-num_words]), " ".join(words[-num_words:])


def _multiple_choice(rng: random.Random, answer: str, pool: list[str]) -> dict:
    """`answer` at a random slot among NUM_CHOICES - 1 distinct distractors drawn from `pool`."""
    distractors: list[str] = []
    while len(distractors) < NUM_CHOICES - 1:
        candidate = rng.choice(pool)
        if candidate != answer and candidate not in distractors:
            distractors.append(candidate)
    label = rng.randrange(NUM_CHOICES)
    return {"choices": distractors[:label] + [answer] + distractors[label:], "label": label}


def cloze_items(text: HeldOut, rng: random.Random, num_items: int) -> list[dict]:
    """Verse head -> one of 4 endings (last CLOZE_WORDS words of the verse or of other verses)."""
    verses = [verse for chapter in text.chapters for verse in chapter if text.usable(verse)]
    endings = [_head_tail(verse, CLOZE_WORDS)[1] for verse in verses]
    items = []
    for verse in rng.sample(verses, min(num_items, len(verses))):
        head, tail = _head_tail(verse, CLOZE_WORDS)
        items.append({"context": head, **_multiple_choice(rng, tail, endings)})
    return items


def next_verse_items(text: HeldOut, rng: random.Random, num_items: int) -> list[dict]:
    """Verse -> one of 4 verses: the one that follows it, or verses of other chapters."""
    pairs = [(chapter, i) for chapter in text.chapters for i in range(len(chapter) - 1)
             if text.usable(chapter[i], chapter[i + 1])]
    items = []
    for chapter, i in rng.sample(pairs, min(num_items, len(pairs))):
        others = [verse for other in text.chapters if other is not chapter for verse in other]
        items.append({"context": chapter[i], **_multiple_choice(rng, chapter[i + 1], others)})
    return items


def complete_items(text: HeldOut, rng: random.Random, num_items: int) -> list[dict]:
    """Verse head -> its last COMPLETE_WORDS words, generated."""
    verses = [verse for chapter in text.chapters for verse in chapter if text.usable(verse)]
    items = []
    for verse in rng.sample(verses, min(num_items, len(verses))):
        head, tail = _head_tail(verse, COMPLETE_WORDS)
        items.append({"context": head, "target": tail})
    return items


BUILDERS = {"kjv_cloze": cloze_items, "kjv_next_verse": next_verse_items, "kjv_complete": complete_items}


def write_local_tasks(data: DataConfig, out_dir: Path = TASKS_DIR, num_items: int = NUM_ITEMS,
                      seed: int = SEED) -> list[Path]:
    """Write `<task>.jsonl` for every local task into `out_dir`; each task draws from its own seeded RNG."""
    text = heldout(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for offset, (name, build) in enumerate(BUILDERS.items()):
        items = build(text, random.Random(seed + offset), num_items)
        path = out_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(item, sort_keys=True) + "\n" for item in items), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_local_tasks(DataConfig()):
        print(f"wrote {written}")
