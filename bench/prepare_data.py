"""`slim prepare-data` at two corpus sizes and on two single huge documents: peak RSS of the whole process tree and
tokens/s per process.

Generates a synthetic JSONL corpus (documents of 5-120 KJV verses drawn at random from the shipped corpus, so the
tokenizer sees real words; seeded) of the largest size under --workdir, takes each smaller size as its prefix, and
runs `slim prepare-data` on each with the tiny teacher's tokenizer and --num-proc tokenizer processes, sampling the
memory of the prepare-data process and all its children every 0.1 s (peak_tree_pss_bytes: the largest sum of their PSS
at one instant, so pages shared between them count once; peak_tokenizer_process_uss_bytes: the largest USS of a
worker; ru_maxrss_children_bytes: the largest single descendant's RSS, from getrusage). The document cases
(--document-mb) are a JSONL whose first line is one document of that size (KJV verses joined by newlines) followed by
300 ordinary documents. The goal is a peak under 1 GiB that grows neither with the corpus nor with its largest
document. Writes bench/results/prepare_data.json; the corpora and shards are deleted afterwards.

    nice -n 10 .venv/bin/python bench/prepare_data.py [--sizes-mb 250 1100] [--document-mb 50 200] [--num-proc 2]
        [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from slim.harness.data.corpus import read_chapters
from slim.harness.provenance import stamped

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "assets" / "tiny-teacher"
RESULTS = ROOT / "bench" / "results" / "prepare_data.json"
MB = 1 << 20


def write_corpus(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Documents of 5-120 random KJV verses, one JSON object per line, until `size_bytes`; returns the documents."""
    verses = [verse for chapter in read_chapters(str(ROOT / "data" / "corpus" / "kjv.txt.gz"))
              for verse in chapter.text.split("\n")]
    rng = random.Random(seed)
    written = documents = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < size_bytes:
            text = "\n".join(rng.choices(verses, k=rng.randint(5, 120)))
            line = json.dumps({"id": documents, "text": text}) + "\n"
            handle.write(line)
            written += len(line.encode())
            documents += 1
    return documents


def write_long_document(path: Path, size_bytes: int, seed: int = 0) -> None:
    """One document of `size_bytes` of KJV verses joined by newlines (written in pieces, never held whole), then
    300 ordinary documents so every split has some."""
    verses = [verse for chapter in read_chapters(str(ROOT / "data" / "corpus" / "kjv.txt.gz"))
              for verse in chapter.text.split("\n")]
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"id": "long", "text": "')
        while written < size_bytes:
            chunk = json.dumps("\n".join(rng.choices(verses, k=1000)) + "\n")[1:-1]
            handle.write(chunk)
            written += len(chunk)
        handle.write('"}\n')
        for number in range(300):
            handle.write(json.dumps({"id": number, "text": "\n".join(rng.choices(verses, k=20))}) + "\n")


def prefix(source: Path, target: Path, size_bytes: int) -> None:
    """The whole lines of `source` up to `size_bytes`."""
    written = 0
    with open(source, "rb") as reader, open(target, "wb") as writer:
        for line in reader:
            if written >= size_bytes:
                break
            writer.write(line)
            written += len(line)


class TreeSampler(threading.Thread):
    """Samples the memory of a process and its descendants until stopped. The tree's total is the sum of PSS
    (proportional set size: a page shared by k processes counts 1/k in each), so a spawned worker's moment between
    fork and exec, when it shares all of its parent's pages, is not counted twice as a sum of RSS would; per-role
    peaks are RSS."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak_total = self.peak_main = self.peak_child = 0
        self.max_children = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                main = self.process.memory_full_info()
                children = [child.memory_full_info() for child in self.process.children(recursive=True)]
            except psutil.Error:  # the tree changed under us (a worker exited); take the next sample
                continue
            self.peak_total = max(self.peak_total, main.pss + sum(child.pss for child in children))
            self.peak_main = max(self.peak_main, main.rss)
            # a worker's RSS once it runs its own interpreter (a just-forked one shares the parent's pages)
            self.peak_child = max([self.peak_child, *(child.uss for child in children)])
            self.max_children = max(self.max_children, len(children))

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_prepare(corpus: Path, output: Path, num_proc: int) -> dict:
    """One `slim prepare-data` in a child process, its summary plus the sampled memory."""
    command = [sys.executable, "-m", "slim.harness.cli.main", "prepare-data", "data.source=jsonl",
               f"data.path={corpus}", f"data.tokenizer={TEACHER}", f"data.output={output}", f"data.num_proc={num_proc}"]
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sampler = TreeSampler(child.pid)
    sampler.start()
    stdout, _ = child.communicate()
    sampler.stop()
    if child.returncode != 0:
        raise SystemExit(f"prepare-data failed ({child.returncode}): {stdout[-2000:]}")
    summary = json.loads(stdout)
    tokens = sum(summary["tokens"].values())
    return {
        "corpus_bytes": corpus.stat().st_size,
        "documents": sum(summary["documents"].values()),
        "tokens": tokens,
        "shards": summary["shards"],
        "dtype": summary["dtype"],
        "num_proc": num_proc,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "prepare_wall_seconds": summary["wall_seconds"],
        "tokens_per_second": summary["tokens_per_second"],
        "tokens_per_second_per_process": summary["tokens_per_second_per_process"],
        "peak_tree_pss_bytes": sampler.peak_total,
        "peak_rss_main_bytes": sampler.peak_main,
        "peak_tokenizer_process_uss_bytes": sampler.peak_child,
        "processes": 1 + sampler.max_children,
        "ru_maxrss_children_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[250, 1100])
    parser.add_argument("--document-mb", type=int, nargs="*", default=[50, 200])
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-prepare-data-", dir=args.workdir))
    results: dict = {"tokenizer": str(TEACHER.relative_to(ROOT)), "cpu_count": psutil.cpu_count(),
                     "machine": platform.processor() or platform.machine(), "sizes": {}, "one_document": {}}
    try:
        largest = root / "corpus-largest.jsonl"
        generated = time.perf_counter()
        write_corpus(largest, max(args.sizes_mb) * MB)
        results["generate_seconds"] = round(time.perf_counter() - generated, 1)
        for size in sorted(args.sizes_mb):
            corpus = largest if size == max(args.sizes_mb) else root / f"corpus-{size}.jsonl"
            if corpus != largest:
                prefix(largest, corpus, size * MB)
            results["sizes"][f"{size}MB"] = run_prepare(corpus, root / f"shards-{size}", args.num_proc)
            print(json.dumps({f"{size}MB": results["sizes"][f"{size}MB"]}, indent=2), flush=True)
            shutil.rmtree(root / f"shards-{size}")
            if corpus != largest:
                corpus.unlink()
        largest.unlink()
        for size in sorted(args.document_mb):
            corpus = root / f"document-{size}.jsonl"
            write_long_document(corpus, size * MB)
            results["one_document"][f"{size}MB"] = run_prepare(corpus, root / f"document-shards-{size}", args.num_proc)
            print(json.dumps({f"one document of {size}MB": results["one_document"][f"{size}MB"]}, indent=2),
                  flush=True)
            shutil.rmtree(root / f"document-shards-{size}")
            corpus.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peaks = [entry["peak_tree_pss_bytes"] for case in ("sizes", "one_document") for entry in results[case].values()]
    results["peak_rss_under_1gib"] = max(peaks) < 1 << 30
    RESULTS.write_text(json.dumps(stamped(results), indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
