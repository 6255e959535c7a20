"""Named float64 running sums that follow the device of what is added to them."""

from __future__ import annotations

import torch


class RunningSums:
    """Float64 sums, created as zeros of the given shapes on CPU.

    A sum moves to the device of the first value added there and stays on it, so accumulating never
    forces a device-to-host copy per batch; `cpu()` reads everything out at the end.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.values = {key: torch.zeros(shape, dtype=torch.float64) for key, shape in shapes.items()}

    def add(self, key: str, value: torch.Tensor) -> None:
        total = self.values[key]
        if total.device != value.device:
            total = total.to(value.device)
        self.values[key] = total.add_(value.to(torch.float64))

    def cpu(self) -> dict[str, torch.Tensor]:
        return {key: total.cpu() for key, total in self.values.items()}
