"""Plots of interpretation results (matplotlib, from the `plots` extra: `pip install i2moe[plots]`).

- `plot_weight_distributions`: violin plots of each interaction type's weight over a dataset,
  overall or per class.
- `plot_sample_contributions`: per-sample stacked bars of each interaction type's contribution
  `w_k · y_k` to one class's logit (positive parts stacked up, negative parts down, the logit as a
  marker).

Interaction attribution (`i2moe.attribution`):

- `plot_attribution_samples`: per-sample stacked bars of the redundancy, uniqueness and synergy
  terms (nats), their sum marked;
- `plot_attribution_by_class`: the mean terms per class, stacked;
- `plot_attribution_distributions`: violin plots of each term over the samples.

All return the matplotlib `Figure` and save it when given a `path`. They use the non-interactive
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


def _stacked_bars(axis, values: np.ndarray, names: list[str], colors: list) -> None:
    """One bar per row of `values` `(n, K)`: positive parts stacked upwards, negative ones downwards."""
    positions = np.arange(len(values))
    positive_base, negative_base = np.zeros(len(values)), np.zeros(len(values))
    for k, (name, color) in enumerate(zip(names, colors)):
        column = values[:, k]
        base = np.where(column >= 0, positive_base, negative_base)
        axis.bar(positions, column, bottom=base, color=color, edgecolor="white", linewidth=0.5, label=_pretty(name))
        positive_base += np.clip(column, 0, None)
        negative_base += np.clip(column, None, 0)
    axis.axhline(0.0, color="black", linewidth=0.8)


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
    _stacked_bars(axis, contributions, names, colors)
    axis.scatter(positions, contributions.sum(1), color="black", marker="D", s=18, zorder=3, label="logit (sum)")
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
    return _finish_bars(figure, axis, path)


def _finish_bars(figure, axis, path):
    """The common ending of the stacked-bar figures: grid, legend outside the bars, saved if `path`."""
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


# --- interaction attribution (i2moe.attribution) ---------------------------------------------------

def _attribution_rows(result, label: int | str | None) -> tuple[np.ndarray, str]:
    """`(N, K)` values to plot; multi-label results need the label to show."""
    if result.values.ndim == 2:
        return result.values, ""
    names = list(result.class_names)
    if label is None or (label not in names and not (isinstance(label, (int, np.integer)) and 0 <= label < len(names))):
        raise ValueError(f"a multi-label attribution is per label: pass `label` as an index or one of {names}")
    index = names.index(label) if label in names else int(label)
    return result.values[:, index], f" (label {names[index]})"


def _missing_note(result, index: int) -> str:
    missing = [name for name, here in zip(result.modality_names, result.present[index]) if not here]
    return f" (missing {', '.join(missing)})" if missing else ""


def plot_attribution_samples(result, indices=None, max_samples: int = 20, label: int | str | None = None,
                             path: str | Path | None = None, title: str | None = None):
    """Stacked bars, one per sample: its redundancy, uniqueness and synergy terms in nats
    (positive stacked upwards, negative downwards) and a marker at their sum, `i(all)`.

    Args:
        result: from `i2moe.attribution.attribute`.
        indices: which samples (default: the first `max_samples`).
        label: for a multi-label result, the label whose attribution is shown.
        path: where to save the figure.
    """
    plt = _pyplot()
    values, which = _attribution_rows(result, label)
    indices = np.arange(min(max_samples, len(values))) if indices is None else np.asarray(indices)
    names = result.component_names
    figure, axis = plt.subplots(figsize=(max(6.5, 0.5 * len(indices) + 3.5), 5.0))
    _stacked_bars(axis, values[indices], names, _colors(plt, len(names)))
    axis.scatter(np.arange(len(indices)), values[indices].sum(1), color="black", marker="D", s=18, zorder=3,
                 label="i(all) (sum)")
    ticks = [f"#{index}" for index in indices]
    if result.labels is not None and result.problem_type == "single_label_classification":
        ticks = [f"{tick} {result.class_names[int(result.labels[index])]}" for tick, index in zip(ticks, indices)]
    ticks = [tick + _missing_note(result, index) for tick, index in zip(ticks, indices)]
    axis.set_xticks(np.arange(len(indices)), ticks, fontsize=8, rotation=40, ha="right", rotation_mode="anchor")
    axis.set_ylabel(f"information about the {result.explained} (nats)")
    axis.set_title(title or f"Where each sample's information comes from{which}", fontsize=11)
    return _finish_bars(figure, axis, path)


def plot_attribution_by_class(result, by: str = "label", max_classes: int = 12, path: str | Path | None = None,
                              title: str | None = None):
    """Per class (the `max_classes` most frequent; multi-label: per label), the mean of each term
    as stacked bars, with the overall mean as the first bar."""
    plt = _pyplot()
    summary = result.summary(by)
    per_class = sorted(summary["per_class"].items(), key=lambda item: -item[1]["count"])[:max_classes]
    groups = [("all", summary["overall"]), *per_class]
    names = result.component_names
    means = np.array([[stats["mean"][name] for name in names] for _, stats in groups])
    figure, axis = plt.subplots(figsize=(max(6.0, 0.6 * len(groups) + 3.5), 4.6))
    _stacked_bars(axis, means, names, _colors(plt, len(names)))
    axis.set_xticks(np.arange(len(groups)), [f"{name}\n(n={stats['count']})" for name, stats in groups], fontsize=8,
                    rotation=30, ha="right", rotation_mode="anchor")
    grouped = {"label": "true class", "prediction": "predicted class"}[by]
    if result.problem_type == "multi_label_classification":
        grouped = "label"
    axis.set_xlabel(grouped)
    axis.set_ylabel("mean information (nats)")
    axis.set_title(title or f"Interaction profile per {grouped}", fontsize=11)
    return _finish_bars(figure, axis, path)


def plot_attribution_distributions(result, label: int | str | None = None, path: str | Path | None = None,
                                   title: str | None = None):
    """Violin plots of each term over the samples, the mean marked (nats; 0 dashed)."""
    plt = _pyplot()
    values, which = _attribution_rows(result, label)
    names = result.component_names
    positions = np.arange(1, len(names) + 1)
    figure, axis = plt.subplots(figsize=(max(5.0, 1.05 * len(names) + 1.5), 4.2), layout="constrained")
    parts = axis.violinplot([values[:, k] for k in range(len(names))], positions=positions, showextrema=False,
                            widths=0.8)
    for body, color in zip(parts["bodies"], _colors(plt, len(names))):
        body.set_facecolor(color)
        body.set_edgecolor("black")
        body.set_alpha(0.7)
    axis.scatter(positions, values.mean(0), marker="D", s=28, color="white", edgecolor="black", zorder=3, label="mean")
    axis.axhline(0.0, color="0.3", linestyle="--", linewidth=1.0)
    axis.set_xticks(positions, [_pretty(name, "\n") for name in names], fontsize=9)
    axis.set_ylabel("per-sample value (nats)")
    axis.set_title(title or f"Distribution of each interaction term over {len(values)} samples{which}", fontsize=11)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, frameon=False)
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


__all__ = ["plot_attribution_by_class", "plot_attribution_distributions", "plot_attribution_samples",
           "plot_sample_contributions", "plot_weight_distributions"]
