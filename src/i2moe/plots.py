"""Plots of interpretation results (matplotlib, from the `plots` extra: `pip install i2moe[plots]`).

- `plot_weight_distributions`: violin plots of each interaction type's weight over a dataset,
  overall or per class.
- `plot_sample_contributions`: per-sample stacked bars of each interaction type's contribution
  `w_k · y_k` to one class's logit (positive parts stacked up, negative parts down, the logit as a
  marker).

Both return the matplotlib `Figure` and save it when given a `path`. They use the non-interactive
Agg backend, so they work on servers without a display.

Example:

```python
>>> from i2moe.interpretation import InterpretationResult
>>> from i2moe.plots import plot_weight_distributions
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> weights = rng.dirichlet([1, 1, 1, 1], size=50)
>>> result = InterpretationResult(["uniqueness_a", "uniqueness_b", "synergy", "redundancy"], weights,
...                               rng.normal(size=(50, 4, 2)), rng.normal(size=(50, 2)), rng.integers(0, 2, 50),
...                               ["no", "yes"])
>>> figure = plot_weight_distributions(result, by_class=True)
>>> len(figure.axes)
2
```
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .interpretation import InterpretationResult


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "i2moe.plots needs matplotlib; install the `plots` extra: pip install 'i2moe[plots]'"
        ) from error
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _colors(plt, count: int) -> list:
    return [plt.get_cmap("tab10")(index % 10) for index in range(count)]


def _pretty(name: str, separator: str = " ") -> str:
    """`uniqueness_image` -> `uniqueness image` (or on two lines with `separator="\\n"`)."""
    return name.replace("uniqueness_", f"uniqueness{separator}").replace("_", " ")


def plot_weight_distributions(result: InterpretationResult, by_class: bool = False, by: str = "label",
                              max_classes: int = 12, path: str | Path | None = None, title: str | None = None):
    """Violin plots of each interaction type's weight over the dataset, with the mean marked and
    the uniform mix (every type weighted 1/K) as a dashed reference line.

    Args:
        result: from `i2moe.interpretation.interpret`.
        by_class: one panel per class (the `max_classes` most frequent), grouped by true label
            (`by="label"`) or predicted class (`by="prediction"`); else one panel for all samples.
        path: where to save the figure (PNG, PDF, ... by extension).
    """
    plt = _pyplot()
    groups = {"all samples": np.ones(len(result.weights), dtype=bool)}
    subtitle = ""
    if by_class:
        class_groups = result._class_groups(by)
        if not class_groups:
            raise ValueError(f"by_class=True needs class indices to group by ({by!r}); this result has none")
        present = sorted(((name, rows) for name, rows in class_groups.items() if rows.any()), key=lambda item: -item[1].sum())
        kind = "true class" if by == "label" else "predicted class"
        groups = {f"{kind}: {name}": rows for name, rows in present[:max_classes]}
        if len(present) > max_classes:
            subtitle = f" — the {max_classes} most frequent of {len(present)} classes"
    columns = min(len(groups), 3)
    rows_count = -(-len(groups) // columns)
    names = result.component_names
    width = max(4.8, 1.05 * len(names) + 1.2)
    figure, axes = plt.subplots(rows_count, columns, figsize=(width * columns, 3.4 * rows_count + 0.8), squeeze=False,
                                sharey=True, layout="constrained")
    colors = _colors(plt, len(names))
    positions = np.arange(1, len(names) + 1)
    uniform = 1.0 / len(names)
    for axis, (label, rows) in zip(axes.flat, groups.items()):
        weights = result.weights[rows]
        parts = axis.violinplot([weights[:, k] for k in range(len(names))], positions=positions, showmeans=False,
                                showextrema=False, widths=0.8)
        for body, color in zip(parts["bodies"], colors):
            body.set_facecolor(color)
            body.set_edgecolor("black")
            body.set_alpha(0.7)
        axis.scatter(positions, weights.mean(0), marker="D", s=28, color="white", edgecolor="black", zorder=3,
                     label="mean weight")
        axis.axhline(uniform, color="0.3", linestyle="--", linewidth=1.0, label=f"uniform mix (1/{len(names)})")
        axis.set_xticks(positions, [_pretty(name, "\n") for name in names], fontsize=9)
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(f"{label} (n={int(rows.sum())})", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel("weight (each sample's weights sum to 1)")
    for axis in list(axes.flat)[len(groups):]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    figure.suptitle(title or f"How much the model relies on each interaction type{subtitle}", fontsize=11)
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def plot_sample_contributions(result: InterpretationResult, indices=None, class_index: int | str = "predicted",
                              max_samples: int = 20, path: str | Path | None = None, title: str | None = None):
    """Stacked bars, one per sample: each interaction type's contribution `w_k · y_k` to one
    class's logit; positive contributions stack upwards, negative ones downwards, and a black
    marker shows the logit (their sum).

    Args:
        result: from `i2moe.interpretation.interpret`.
        indices: which samples (default: the first `max_samples`).
        class_index: the class whose logit is decomposed: an index, or `"predicted"` (each
            sample's predicted class).
        path: where to save the figure.
    """
    plt = _pyplot()
    indices = np.arange(min(max_samples, len(result.weights))) if indices is None else np.asarray(indices)
    if class_index == "predicted":
        classes = result.predictions[indices]
    elif isinstance(class_index, (int, np.integer)) and 0 <= class_index < len(result.class_names):
        classes = np.full(len(indices), class_index)
    else:
        raise ValueError(f"`class_index` must be 'predicted' or in [0, {len(result.class_names) - 1}], got {class_index!r}")
    contributions = result.contributions[indices, :, classes]  # (n, K)
    names = result.component_names
    colors = _colors(plt, len(names))
    figure, axis = plt.subplots(figsize=(max(6.5, 0.5 * len(indices) + 3.5), 5.0))
    positions = np.arange(len(indices))
    positive_base, negative_base = np.zeros(len(indices)), np.zeros(len(indices))
    for k, (name, color) in enumerate(zip(names, colors)):
        values = contributions[:, k]
        base = np.where(values >= 0, positive_base, negative_base)
        axis.bar(positions, values, bottom=base, color=color, edgecolor="white", linewidth=0.5, label=_pretty(name))
        positive_base += np.clip(values, 0, None)
        negative_base += np.clip(values, None, 0)
    axis.scatter(positions, contributions.sum(1), color="black", marker="D", s=18, zorder=3, label="logit (sum)")
    axis.axhline(0.0, color="black", linewidth=0.8)
    # One line per sample, rotated, so long class names do not run into each other.
    labels = [f"#{index} {result.class_names[cls]}" for index, cls in zip(indices, classes)]
    has_labels = result._has_class_labels()
    if has_labels:
        labels = [f"{text} (true: {result.class_names[int(result.labels[index])]})" for text, index in zip(labels, indices)]
    axis.set_xticks(positions, labels, fontsize=8, rotation=40, ha="right", rotation_mode="anchor")
    decomposed = "predicted class" if class_index == "predicted" else f"class {result.class_names[int(class_index)]}"
    axis.set_xlabel(f"sample: #index, {decomposed}" + (" (true class)" if has_labels else ""))
    axis.set_ylabel("contribution to the class logit  $w_k \\cdot y_k$")
    axis.set_title(title or f"Each interaction type's contribution to the logit of the {decomposed}", fontsize=11)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


__all__ = ["plot_sample_contributions", "plot_weight_distributions"]
