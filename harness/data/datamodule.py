"""Lightning data module over the packed corpus (in memory or prepared shards): seeded shuffling, plus a calibration
loader; `data.num_workers` DataLoader workers fetch the windows (the batch order stays the sampler's)."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader, DistributedSampler
from transformers import PreTrainedTokenizerFast

from slim.harness.config.schema import DataConfig
from slim.harness.data.packing import CorpusData, WindowDataset, build_corpus_data
from slim.harness.data.sampler import ResumableBatchSampler
from slim.harness.errors import UserError


class CorpusDataModule(pl.LightningDataModule):
    """Train/validation/calibration loaders; the train order depends only on `seed` and the step."""

    def __init__(self, cfg: DataConfig, batch_size: int, seed: int = 0, step_offset: int = 0) -> None:
        """`step_offset`: global steps already trained by earlier stages of a progressive plan; the batch
        stream continues from there instead of replaying the first batches."""
        super().__init__()
        if batch_size < 1:
            raise UserError(f"train.batch_size: must be >= 1, got {batch_size}")
        if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
            raise UserError(f"data.num_workers: must be an integer >= 0, got {cfg.num_workers!r}")
        self.cfg = cfg
        self.batch_size = batch_size
        self.seed = seed
        self.step_offset = step_offset
        self.data: CorpusData | None = None

    def prepare_data(self) -> None:
        """Train the tokenizer and write the packed cache once per node, before any `setup`."""
        build_corpus_data(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.data = build_corpus_data(self.cfg)
        if len(self.data.train) < self.batch_size:
            raise UserError(
                f"train.batch_size: {self.batch_size} exceeds the {len(self.data.train)} packed train sequences"
            )

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        return self._require_data().tokenizer

    def train_dataloader(self) -> DataLoader:
        """The seeded batch stream from the trainer's current (possibly restored) global step to max_steps, as the
        trainer's `accumulate_grad_batches` micro-batches per step; one epoch from step 0 when no trainer with a
        step budget is attached."""
        train = self._require_data().train
        trainer = self.trainer
        if trainer is not None and trainer.max_steps > 0:
            offset = self.step_offset
            steps_done, end = (lambda: trainer.global_step + offset), trainer.max_steps + offset
        else:
            steps_done, end = (lambda: 0), len(train) // self.batch_size
        rank, world_size = self._process()
        sampler = ResumableBatchSampler(len(train), self.batch_size, self.seed, steps_done, end, rank, world_size,
                                        self._micro_batches())
        return DataLoader(train, batch_sampler=sampler, num_workers=self.cfg.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require_data().validation)

    def calibration_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require_data().calibration)

    def _eval_loader(self, dataset: WindowDataset) -> DataLoader:
        """In order; with several processes each takes every world_size-th sequence (DistributedSampler, the
        last few repeated to equal lengths) in batches of batch_size / world_size (split like training's under
        accumulation, so evaluation needs no more memory), so that together they cover what one process would,
        and metrics synced across them match a one-process run."""
        rank, world_size = self._process()
        batch_size = self.batch_size // world_size // self._micro_batches()
        if world_size == 1:
            return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.cfg.num_workers)
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.cfg.num_workers)

    def _process(self) -> tuple[int, int]:
        """(rank, world size) of this process in the attached trainer; (0, 1) without one."""
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def _micro_batches(self) -> int:
        """Micro-batches per step of the attached trainer (gradient accumulation); 1 without one."""
        return 1 if self.trainer is None else self.trainer.accumulate_grad_batches

    def _require_data(self) -> CorpusData:
        assert self.data is not None, "CorpusDataModule.setup() must run first"
        return self.data
