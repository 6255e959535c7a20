"""A batch order that depends only on (seed, step), so a resumed run sees exactly the batches it missed.

Epoch e visits the train set in `randperm(n, seed + e)` order (trailing partial batch dropped).
Starting at global step s skips the first s batches of that stream: a run killed at step s and
resumed reproduces the uninterrupted run's batches from s on. With several processes, each yields its
own contiguous 1/world_size slice of every global batch, so the processes together see exactly the
batches one process would. Under gradient accumulation each slice comes as equal micro-batches, in order:
a step is still one global batch of the same stream, and steps still count optimizer steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields the seeded stream's batches (as `micro_batches` parts each) from `current_step()` (read at each
    new iteration) to `end_step`.

    Reading the step when iteration starts, not at construction, keeps the stream right when the
    trainer restores its step after building the loader, or restarts iteration at an epoch boundary.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, current_step: Callable[[], int],
                 end_step: int, rank: int = 0, world_size: int = 1, micro_batches: int = 1) -> None:
        """`batch_size` is the global batch; this process yields slice `rank` of `world_size` equal ones, split
        into `micro_batches` equal micro-batches per step."""
        assert batch_size % world_size == 0 and 0 <= rank < world_size, (batch_size, rank, world_size)
        assert (batch_size // world_size) % micro_batches == 0, (batch_size, world_size, micro_batches)
        self.num_items = num_items
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.micro_batches = micro_batches
        self.rank = rank
        self.seed = seed
        self.current_step = current_step
        self.end_step = end_step
        self.batches_per_epoch = num_items // batch_size

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[list[int]]:
        step, end = self.current_step(), self.end_step
        while step < end:
            epoch, offset = divmod(step, self.batches_per_epoch)
            order = self._epoch_order(epoch)
            for batch in range(offset, min(self.batches_per_epoch, offset + end - step)):
                start = batch * self.batch_size + self.rank * self.local_batch_size
                yield from (micro.tolist() for micro in order[start:start + self.local_batch_size]
                            .chunk(self.micro_batches))
                step += 1

    def __len__(self) -> int:
        return max(self.end_step - self.current_step(), 1) * self.micro_batches
