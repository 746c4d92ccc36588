"""h-space: the output of the UNet's middle block (the paper's semantic bottleneck).

A forward hook on `unet.mid_block` records h and lets a method return a replacement; the
decoder half of the UNet then runs on the new h. x_t itself is never edited here.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch


class StopForward(Exception):
    """Raised by the hook to end a forward pass at the middle block (encoder-only pass)."""

    def __init__(self, h: torch.Tensor):
        super().__init__("stopped at mid_block")
        self.h = h


class HSpaceHook:
    """Attach to a UNet; `edit(h) -> h | None` is called at every mid-block forward."""

    def __init__(self, unet: torch.nn.Module):
        if getattr(unet, "mid_block", None) is None:
            raise ValueError(f"{type(unet).__name__} has no mid_block: h-space methods need a UNet "
                             "with a middle block (UNet2DModel / UNet2DConditionModel)")
        self.unet = unet
        self.edit: Callable[[torch.Tensor], torch.Tensor | None] | None = None
        self.record = False
        self.recorded: list[torch.Tensor] = []
        self.stop = False
        self._handle = unet.mid_block.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        if self.stop:
            raise StopForward(h)
        if self.edit is not None:
            new = self.edit(h)
            if new is not None:
                h = new
        if self.record:
            self.recorded.append(h.detach().float().cpu())
        return (h, *output[1:]) if isinstance(output, tuple) else h

    def encode(self, *args, **kwargs) -> torch.Tensor:
        """Run the UNet only up to h (keeps the autograd graph; used for x-path guidance)."""
        self.stop = True
        try:
            self.unet(*args, **kwargs)
        except StopForward as done:
            return done.h
        finally:
            self.stop = False
        raise RuntimeError("the UNet never reached its mid_block")

    @contextmanager
    def recording(self):
        self.record, self.recorded = True, []
        try:
            yield self.recorded
        finally:
            self.record = False

    def remove(self) -> None:
        self._handle.remove()


def h_shape(unet: torch.nn.Module) -> tuple[int, int, int]:
    """(C, h, w) of the middle block's output for the UNet's native sample size."""
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    return unet.config.block_out_channels[-1], size // factor, size // factor
