"""Training noise that depends on the sample, not on how the batch is split over processes.

I2MoE's perturbation noise, DMIL's variational samples and modality dropout are random. Drawn from
torch's global RNG, a sample's noise depends on its position in the process's batch, so a run on two
processes differs from the same run on one. `CounterNoise` draws every number from a counter-based
hash of (seed, step, sample id, element index, stream): the same sample at the same step gets the
same numbers on any number of processes. The model builds one per training step when the batch
carries `sample_ids` (e.g. the dataset row index); without them, the parts use torch's RNG.

The hash is a 32-bit integer mixer (the `lowbias32` finaliser) applied in int64 arithmetic; normals
come from two uniforms by Box-Muller.

This file travels with saved models as Hub remote code: it imports only torch.
"""

from __future__ import annotations

import math

import torch


_MASK32 = 0xFFFFFFFF


def _mix32(value: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit mixer on int64 tensors holding values in [0, 2^32). Products may wrap in
    int64; the low 32 bits, all that is kept, are right either way."""
    value = value ^ (value >> 16)
    value = (value * 0x7FEB352D) & _MASK32
    value = value ^ (value >> 15)
    value = (value * 0x846CA68B) & _MASK32
    return value ^ (value >> 16)


class CounterNoise:
    """Per-sample random numbers for one training step.

    Args:
        seed: the run's seed (the same on every process: `transformers.set_seed` / `torch.manual_seed`).
        step: the model's training-step counter (the same on every process).
        sample_ids: `(B,)` integer id of each row's sample, unique within a step.
    """

    def __init__(self, seed: int, step: int, sample_ids: torch.Tensor):
        self.seed, self.step = seed & _MASK32, step & _MASK32
        self.sample_ids = sample_ids.to(torch.int64)

    def subset(self, rows: torch.Tensor) -> "CounterNoise":
        """The same numbers for a subset of the rows (index or boolean mask)."""
        return CounterNoise(self.seed, self.step, self.sample_ids[rows])

    def uniform(self, shape: tuple[int, ...], stream: int, device=None) -> torch.Tensor:
        """`(B, *shape)` uniform in (0, 1); `stream` separates the uses of one step."""
        return self._uniform(shape, 2 * stream, device)

    def normal(self, shape: tuple[int, ...], stream: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """`(B, *shape)` standard normal (Box-Muller on two independent uniforms)."""
        radius = torch.sqrt(-2.0 * torch.log(self._uniform(shape, 2 * stream, device)))
        angle = (2.0 * math.pi) * self._uniform(shape, 2 * stream + 1, device)
        return (radius * torch.cos(angle)).to(dtype)

    def _uniform(self, shape: tuple[int, ...], stream: int, device) -> torch.Tensor:
        device = device if device is not None else self.sample_ids.device
        count = math.prod(shape)
        key = _mix32(_mix32(torch.tensor(self.seed, device=device) ^ stream) ^ self.step)
        rows = _mix32(key ^ (self.sample_ids.to(device) & _MASK32))[:, None]
        elements = torch.arange(count, device=device, dtype=torch.int64)[None]
        bits = _mix32(_mix32(rows ^ elements) + stream)
        return ((bits.to(torch.float64) + 0.5) / 2.0**32).to(torch.float32).view(-1, *shape)


def standard_normal(noise: CounterNoise | None, like: torch.Tensor, stream: int, batch_dim: int = 0) -> torch.Tensor:
    """Normal noise shaped like `like` whose `batch_dim` indexes samples: per sample from `noise`,
    or from torch's RNG when there is none."""
    if noise is None:
        return torch.randn_like(like)
    moved = like.movedim(batch_dim, 0)
    drawn = noise.normal(tuple(moved.shape[1:]), stream, device=like.device, dtype=like.dtype)
    return drawn.movedim(0, batch_dim)


def uniform(noise: CounterNoise | None, like: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform (0, 1) noise shaped like `like` `(B, ...)`: per sample from `noise`, or torch's RNG."""
    if noise is None:
        return torch.rand(like.shape, device=like.device)
    return noise.uniform(tuple(like.shape[1:]), stream, device=like.device)


__all__ = ["CounterNoise", "standard_normal", "uniform"]
