"""Evaluation metrics shipped with the package as local `evaluate` modules, so they load offline.

`evaluate.load("accuracy")` downloads the metric script from the Hub; these modules are loaded
from their folder instead: `load_metric("classification")`.
"""

from __future__ import annotations

from pathlib import Path

import evaluate


METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load the metric `name` (a folder `metrics/<name>/<name>.py` of this package) by path, offline."""
    path = METRICS_DIR / name / f"{name}.py"
    if not path.exists():
        available = sorted(folder.name for folder in METRICS_DIR.iterdir() if (folder / f"{folder.name}.py").exists())
        raise ValueError(f"unknown metric {name!r}; this package ships {available}")
    return evaluate.load(str(path), **kwargs)


__all__ = ["METRICS_DIR", "load_metric"]
