"""h-space: the output of the denoiser's middle block (the paper's semantic bottleneck).

For a UNet, h is `unet.mid_block`'s output [B, C, h, w]. For a transformer it is the image
stream of the middle transformer block (SD3 and Flux blocks return `(encoder_hidden_states,
hidden_states)`; PixArt's blocks return the image tokens), [B, tokens, D], average-pooled over
the token grid to at most POOL x POOL cells, [B, D, rows, cols] (see `pool_tokens`). A forward
hook records h and lets a method return a replacement; the rest of the network then runs on the
new h. x_t itself is never edited here.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

# Transformer h is pooled to at most this many cells per side: the 8x8 grid SD 1.5's mid-block has
# at 512 px. Flattening all tokens would make a probe's input tokens x D wide (SD 3.5 at 1024 px:
# 4096 x 1536 = 6.3M floats per image and step), too many to record or fit; a single mean over the
# tokens loses where in the image a feature is (docs/real-models.md measures both).
POOL = 8


class StopForward(Exception):
    """Raised by the hook to end a forward pass at the hooked block (encoder-only pass)."""

    def __init__(self, h: torch.Tensor):
        super().__init__("stopped at the h-space block")
        self.h = h


def pooled_grid(grid: tuple[int, int], pool: int = POOL) -> tuple[int, int]:
    """Cells per side of pooled h: the largest divisor of each side of the token grid up to `pool`,
    so every cell averages the same number of tokens."""
    return tuple(max(d for d in range(1, min(pool, side) + 1) if side % d == 0) for side in grid)


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int], pool: int = POOL) -> torch.Tensor:
    """[B, rows*cols, D] image tokens (row-major, as patch embeddings and Flux's packing order
    them) -> [B, D, r, c], each cell the mean of a block of tokens."""
    rows, cols = grid
    b, n, d = tokens.shape
    r, c = pooled_grid(grid, pool)
    image = tokens.transpose(1, 2).reshape(b, d, rows, cols)
    return torch.nn.functional.avg_pool2d(image, (rows // r, cols // c))


def lift(delta: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A change of pooled h [B, D, r, c] as a change of the tokens [B, rows*cols, D]: the same
    displacement for every token of a cell. It is the smallest change of the tokens (least
    squares) whose pooled value is exactly the method's edit."""
    rows, cols = grid
    b, d, r, c = delta.shape
    full = delta.repeat_interleave(rows // r, dim=2).repeat_interleave(cols // c, dim=3)
    return full.reshape(b, d, rows * cols).transpose(1, 2)


class HSpaceHook:
    """Attach to a denoiser's block; `edit(h) -> h | None` is called at every forward of it.

    module: the block's path in the denoiser ("mid_block", "transformer_blocks.12"); stream: which
    element of a tuple output is the image stream; grid: the image tokens' (rows, cols) when the
    block outputs tokens, which are then pooled (`pool_tokens`)."""

    def __init__(self, model: torch.nn.Module, module: str = "mid_block", stream: int = 0,
                 grid: tuple[int, int] | None = None, pool: int = POOL):
        try:
            target = model.get_submodule(module)
        except AttributeError:
            target = None
        if target is None:
            if module == "mid_block":
                raise ValueError(f"{type(model).__name__} has no mid_block: h-space methods need a UNet "
                                 "with a middle block (UNet2DModel / UNet2DConditionModel)")
            raise ValueError(f"{type(model).__name__} has no module {module!r}: set hspace to a block path such "
                             "as transformer_blocks.12 (print the model to see its blocks)") from None
        self.unet = self.model = model
        self.module, self.stream, self.grid, self.pool = module, stream, grid, pool
        self.edit: Callable[[torch.Tensor], torch.Tensor | None] | None = None
        self.record = False
        self.recorded: list[torch.Tensor] = []
        self.stop = False
        self._handle = target.register_forward_hook(self._hook)

    def _tokens(self, h: torch.Tensor) -> bool:
        return self.grid is not None and h.dim() == 3 and h.shape[1] == self.grid[0] * self.grid[1]

    def _hook(self, module, inputs, output):
        index = self.stream if isinstance(output, tuple) else None
        h = output if index is None else output[index]
        tokens = self._tokens(h)
        features = pool_tokens(h, self.grid, self.pool) if tokens else h
        if self.stop:
            raise StopForward(features)
        if self.edit is not None:
            new = self.edit(features)
            if new is not None:
                h = h + lift(new - features, self.grid).to(h.dtype) if tokens else new
                features = new
        if self.record:
            self.recorded.append(features.detach().float().cpu())
        if index is None:
            return h
        return (*output[:index], h, *output[index + 1:])

    def run_until(self, forward: Callable[[], object]) -> torch.Tensor:
        """Run `forward` (a call of the denoiser) only up to h, which is returned with its
        autograd graph (x-path guidance differentiates it)."""
        self.stop = True
        try:
            forward()
        except StopForward as done:
            return done.h
        finally:
            self.stop = False
        raise RuntimeError(f"the denoiser never reached {self.module}")

    def encode(self, *args, **kwargs) -> torch.Tensor:
        """Run the denoiser itself with these arguments only up to h."""
        return self.run_until(lambda: self.model(*args, **kwargs))

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
