"""Synthetic two-modality tasks with a known interaction, to see what an I2MoE model's weights say.

Two modalities `a` and `b`, each a vector of independent N(0, 1) features; the label is

- `"uniqueness"`: the sign of `a[0]` (only modality a's unique information matters);
- `"synergy"`: the XOR of the signs of `a[0]` and `b[0]` (neither modality alone says anything
  about the label; both together determine it).

`train_synthetic` trains a tiny I2MoE (concat fusion) on fresh batches; `interpret_synthetic`
interprets it on held-out samples. The tests, `examples/i2moe_interpretation_synthetic.py` and
`benchmarks/i2moe_synthetic_interactions.py` use them.

**The planted-interaction suite** (`planted_batch`, `train_planted`; for `i2moe.attribution`):
2 or 3 modalities `a`, `b` (, `c`), each a 16-d vector, 4 classes, and one planted type per
sample, named like the attribution's terms:

- `uniqueness_<m>`: modality m carries the label's codeword (the others are noise);
- `redundancy`: every modality carries the label's codeword;
- `synergy` (2 modalities) / `synergy_<a>_<b>...` (3): each modality of the coalition carries the
  codeword of a uniform latent digit, the digits summing to the label mod 4; any strict part of
  the coalition says nothing about the label;
- `mixture`: each sample's type drawn uniformly from the above, recorded in `planted`.

Codewords are fixed random vectors (the same for every call), drawn from two codebooks per
modality (label and synergy digits) so that a sample's type can be told from its inputs; noise
is N(0, `PLANTED_NOISE`²). Models are trained with modality dropout (`config.modality_dropout`; `random_modality_mask` draws masks for held-out data).

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
from itertools import combinations

import numpy as np
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


# --- the planted-interaction suite ------------------------------------------------------------------

PLANTED_MODALITIES = ("a", "b", "c")
PLANTED_WIDTH = 16
PLANTED_CLASSES = 4
PLANTED_NOISE = 0.5
_CODEBOOK_SEED = 20251


def planted_types(num_modalities: int = 2) -> list[str]:
    """The single types of the suite for 2 or 3 modalities, in the order of the attribution's
    terms (`i2moe.attribution.component_names_for`)."""
    if num_modalities not in (2, 3):
        raise ValueError(f"num_modalities: the planted suite has 2 or 3 modalities, got {num_modalities!r}")
    names = PLANTED_MODALITIES[:num_modalities]
    coalitions = [c for size in range(2, num_modalities + 1) for c in combinations(names, size)]
    synergies = ["synergy"] if num_modalities == 2 else ["synergy_" + "_".join(c) for c in coalitions]
    return [*(f"uniqueness_{name}" for name in names), "redundancy", *synergies]


def _codebooks() -> torch.Tensor:
    """`(3 modalities, 2 books (label, synergy digit), classes, width)`, the same on every call."""
    generator = torch.Generator().manual_seed(_CODEBOOK_SEED)
    return torch.randn(len(PLANTED_MODALITIES), 2, PLANTED_CLASSES, PLANTED_WIDTH, generator=generator)


def _carriers(kind: str, names: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """`("label" | "digit", the modalities carrying it)` for a single planted type."""
    if kind.startswith("uniqueness_"):
        return "label", (kind.removeprefix("uniqueness_"),)
    if kind == "redundancy":
        return "label", names
    if kind == "synergy":
        return "digit", names[:2]
    return "digit", tuple(kind.removeprefix("synergy_").split("_"))


def planted_batch(kind: str, size: int, num_modalities: int = 2, generator: torch.Generator | None = None,
                  noise: float = PLANTED_NOISE) -> dict[str, torch.Tensor]:
    """`{"a_features", "b_features"(, "c_features"), "labels", "planted"}` for `size` fresh samples of
    `kind` (one of `planted_types(num_modalities)` or `"mixture"`); `planted` holds each sample's
    type as an index into `planted_types(num_modalities)`."""
    types = planted_types(num_modalities)
    if kind not in (*types, "mixture"):
        raise ValueError(f"planted kind must be one of {[*types, 'mixture']}, got {kind!r}")
    names = PLANTED_MODALITIES[:num_modalities]
    books = _codebooks()
    labels = torch.randint(PLANTED_CLASSES, (size,), generator=generator)
    if kind == "mixture":
        planted = torch.randint(len(types), (size,), generator=generator)
    else:
        planted = torch.full((size,), types.index(kind))
    features = torch.randn(num_modalities, size, PLANTED_WIDTH, generator=generator) * noise
    digits = torch.randint(PLANTED_CLASSES, (num_modalities, size), generator=generator)
    for index, single in enumerate(types):
        rows = planted == index
        book, carriers = _carriers(single, names)
        positions = [names.index(name) for name in carriers]
        if book == "digit":  # the last carrier's digit completes the sum to the label
            others = digits[positions[:-1]][:, rows].sum(0)
            digits[positions[-1], rows] = (labels[rows] - others) % PLANTED_CLASSES
        for position in positions:
            symbol = labels[rows] if book == "label" else digits[position, rows]
            features[position, rows] += books[position, 0 if book == "label" else 1, symbol]
    batch = {f"{name}_features": features[k] for k, name in enumerate(names)}
    return {**batch, "labels": labels, "planted": planted}


def held_out_planted(kind: str, num_modalities: int = 2, size: int = 2048, seed: int = HELD_OUT_SEED,
                     noise: float = PLANTED_NOISE) -> dict[str, torch.Tensor]:
    """The same `size` held-out samples of `kind` for every call with the same `seed`."""
    return planted_batch(kind, size, num_modalities, torch.Generator().manual_seed(seed), noise)


def planted_config(num_modalities: int = 2, method: str = "vanilla", **overrides) -> I2MoEConfig:
    """A tiny model for the planted suite: one 32-wide MLP tower per modality, width 32, concat
    fusion, 4 classes, no dropout; `overrides` replace any field (e.g. `i2m2_heads=True`)."""
    tower = {"input_size": PLANTED_WIDTH, "hidden_size": 32, "num_hidden_layers": 1}
    settings = dict(
        modalities=[{"name": name, "tower": I2MoEFeaturesConfig(**tower)}
                    for name in PLANTED_MODALITIES[:num_modalities]],
        hidden_size=32, fusion="concat", fusion_hidden_size=32, num_labels=PLANTED_CLASSES, dropout=0.0,
        method=method, i2moe_reweight_dropout=0.0, dmil_stage=3, dmil_latent_size=16,
    )
    settings.update(overrides)
    return I2MoEConfig(**settings)


def random_modality_mask(size: int, num_modalities: int, rate: float, generator: torch.Generator | None = None
                         ) -> torch.Tensor:
    """`(size, M)` long: each modality dropped with probability `rate`, independently per sample;
    a row that would lose every modality keeps one, chosen uniformly."""
    mask = torch.rand(size, num_modalities, generator=generator) >= rate
    keep = torch.randint(num_modalities, (size,), generator=generator)
    empty = ~mask.any(1)
    mask[empty, keep[empty]] = True
    return mask.long()


def train_planted(kind: str, num_modalities: int = 2, method: str = "vanilla", steps: int = 400, lr: float = 3e-3,
                  seed: int = 0, batch_size: int = 128, modality_dropout: float = 0.3,
                  **config_overrides) -> I2MoEForClassification:
    """Train `planted_config(num_modalities, method, **config_overrides)` with Adam on `steps` fresh
    batches of `kind` with `config.modality_dropout = modality_dropout` (each sample's modalities
    dropped by the model, never all of them). `seed` sets the initialisation and the data; the
    dropout is drawn per sample (`sample_ids`). Returns the model in eval mode."""
    torch.manual_seed(seed)
    config = planted_config(num_modalities, method, modality_dropout=modality_dropout, **config_overrides)
    model = I2MoEForClassification(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        batch = planted_batch(kind, batch_size, num_modalities, data)
        batch.pop("planted")
        # The model drops modalities itself (`config.modality_dropout`), per sample from `sample_ids`.
        sample_ids = torch.arange(step * batch_size, (step + 1) * batch_size)
        model(**batch, sample_ids=sample_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def planted_samples(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The model inputs and labels of a planted batch as a list of samples (without `planted`)."""
    columns = {key: value for key, value in batch.items() if key != "planted"}
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the boolean `positives` (ties count half)."""
    scores, positives = np.asarray(scores, dtype=float), np.asarray(positives, dtype=bool)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = np.cumsum(counts) - (counts - 1) / 2.0  # the mean rank of each distinct score
    ranks = ranks[inverse]
    positive_count, negative_count = positives.sum(), (~positives).sum()
    if positive_count == 0 or negative_count == 0:
        raise ValueError("auroc: needs both positive and negative samples")
    return float((ranks[positives].sum() - positive_count * (positive_count + 1) / 2) / (positive_count * negative_count))


__all__ = [
    "PLANTED_CLASSES", "PLANTED_MODALITIES", "PLANTED_NOISE", "QUADRANTS", "SYNTHETIC_TASKS", "auroc",
    "dominant_by_quadrant", "held_out_batch", "held_out_planted", "interpret_synthetic", "planted_batch",
    "planted_config", "planted_samples", "planted_types", "random_modality_mask", "synthetic_batch",
    "synthetic_config", "train_planted", "train_synthetic",
]
