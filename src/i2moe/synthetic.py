"""Synthetic two-modality tasks with a known interaction, to see what an I2MoE model's weights say.

Two modalities `a` and `b`, each a vector of independent N(0, 1) features; the label is

- `"uniqueness"`: the sign of `a[0]` (only modality a's unique information matters);
- `"synergy"`: the XOR of the signs of `a[0]` and `b[0]` (neither modality alone says anything
  about the label; both together determine it).

`train_synthetic` trains a tiny I2MoE (concat fusion) on fresh batches; `interpret_synthetic`
interprets it on held-out samples. The tests, `examples/i2moe_interpretation_synthetic.py` and
`benchmarks/i2moe_synthetic_interactions.py` use them.

Example:

```python
>>> from i2moe.synthetic import interpret_synthetic, train_synthetic
>>> model = train_synthetic("uniqueness", steps=100, lr=1e-2, seed=0)
>>> summary = interpret_synthetic(model, "uniqueness").summary()
>>> summary["dominant_type"], summary["accuracy"] > 0.9
('uniqueness_a', True)
```
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .configuration_i2moe import I2MoEConfig
from .data_utils import check_int
from .interpretation import InterpretationResult, interpret
from .modeling_i2moe import I2MoEForClassification
from .towers_i2moe import I2MoEFeaturesConfig


def _sign_of_a(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, 0] > 0).long()


def _xor_of_signs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a[:, 0] > 0) ^ (b[:, 0] > 0)).long()


SYNTHETIC_TASKS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "uniqueness": _sign_of_a,
    "synergy": _xor_of_signs,
}
NUM_FEATURES = 4
HELD_OUT_SEED = 12345
QUADRANTS = ("a-b-", "a-b+", "a+b-", "a+b+")  # signs of (a[0], b[0])


def synthetic_batch(task: str, size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """`{"a_features", "b_features", "labels"}` for `size` fresh samples of `task`."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"synthetic task must be one of {sorted(SYNTHETIC_TASKS)}, got {task!r}")
    check_int("synthetic_batch", "size", size, 1)
    a = torch.randn(size, NUM_FEATURES, generator=generator)
    b = torch.randn(size, NUM_FEATURES, generator=generator)
    return {"a_features": a, "b_features": b, "labels": SYNTHETIC_TASKS[task](a, b)}


def synthetic_config(**overrides) -> I2MoEConfig:
    """A tiny I2MoE for the synthetic tasks: two 4-feature towers, width 16, concat fusion, 2 classes,
    λ_int 0.5, no dropout; `overrides` replace any field (e.g. `i2moe_perturbation="mean"`)."""
    tower = {"input_size": NUM_FEATURES, "hidden_size": 16, "num_hidden_layers": 1}
    settings = dict(
        modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(**tower)},
                    {"name": "b", "tower": I2MoEFeaturesConfig(**tower)}],
        hidden_size=16, fusion="concat", fusion_hidden_size=16, num_labels=2, dropout=0.0,
        method="i2moe", i2moe_lambda_int=0.5, i2moe_reweight_dropout=0.0,
    )
    settings.update(overrides)
    return I2MoEConfig(**settings)


def train_synthetic(task: str, steps: int, lr: float, seed: int = 0, batch_size: int = 64,
                    **config_overrides) -> I2MoEForClassification:
    """Train `synthetic_config(**config_overrides)` with Adam on `steps` fresh batches of `task`.

    `seed` sets the model's initialisation, the perturbation noise (torch's global RNG) and the
    training data (its own generator). Returns the model in eval mode.
    """
    torch.manual_seed(seed)
    model = I2MoEForClassification(synthetic_config(**config_overrides))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        model(**synthetic_batch(task, batch_size, data)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def held_out_batch(task: str, size: int = 1024, seed: int = HELD_OUT_SEED) -> dict[str, torch.Tensor]:
    """The same `size` held-out samples of `task` for every call with the same `seed`."""
    return synthetic_batch(task, size, torch.Generator().manual_seed(seed))


def interpret_synthetic(model: I2MoEForClassification, task: str, size: int = 1024,
                        seed: int = HELD_OUT_SEED) -> InterpretationResult:
    """`interpret` the model on `held_out_batch(task, size, seed)`."""
    batch = held_out_batch(task, size, seed)
    samples = [dict(zip(batch, values)) for values in zip(*batch.values())]
    return interpret(model, samples, batch_size=256, progress=False)


def dominant_by_quadrant(result: InterpretationResult, task: str, seed: int = HELD_OUT_SEED) -> dict[str, str]:
    """For `interpret_synthetic(model, task, seed=seed)`'s result: the component with the largest
    mean weight in each sign quadrant of `(a[0], b[0])` (`QUADRANTS`). On the XOR task, different
    components in different quadrants mean the reweighting model routes, computing the
    interaction itself from components that are each at chance."""
    batch = held_out_batch(task, len(result.weights), seed)
    quadrant = (2 * (batch["a_features"][:, 0] > 0).long() + (batch["b_features"][:, 0] > 0).long()).numpy()
    return {name: result.component_names[int(result.weights[quadrant == index].mean(0).argmax())]
            for index, name in enumerate(QUADRANTS)}


__all__ = [
    "QUADRANTS", "SYNTHETIC_TASKS", "dominant_by_quadrant", "held_out_batch", "interpret_synthetic", "synthetic_batch",
    "synthetic_config", "train_synthetic",
]
