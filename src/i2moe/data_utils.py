"""Where the real datasets live, and the error a user sees when they are not there."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path


DATA_DIR_ENV = "I2MOE_DATA_DIR"
# The project's checkout keeps the datasets in ../shared/data, beside the repository root.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None, required: str, source: str) -> Path:
    """The data root: `data_dir` if given, else `$I2MOE_DATA_DIR`, else `../shared/data`.

    Args:
        required: a path below the root that must exist (e.g. `"mnist/mnist.npz"`).
        source: where to get the data publicly, named in the error when it is missing.
    """
    root = Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"the data folder {root} is a file; point `data_dir` / ${DATA_DIR_ENV} at the folder that holds `{required}`")
    if not (root / required).exists():
        raise FileNotFoundError(
            f"{root / required} not found. Download it from {source} and place it under {root}, or point "
            f"--data_dir / ${DATA_DIR_ENV} at the folder that holds `{required}`."
        )
    return root


def check_int(where: str, name: str, value, minimum: int, optional: bool = False) -> None:
    """`value` must be an int >= `minimum` (or None when `optional`); bools and floats are refused,
    so `seed=1.5` or `num_validation=True` never pass as a different number."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{where}: `{name}` must be {allowed}, got {value!r}")


def check_number(where: str, name: str, value, low: float = -math.inf, high: float = math.inf,
                 interval: str | None = None) -> None:
    """`value` must be a finite real number with `low <= value < high` (bounds as `interval` says)."""
    valid = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not valid or not low <= value < high:
        raise ValueError(f"{where}: `{name}` must be a finite number{' in ' + interval if interval else ''}, got {value!r}")


def check_cache_dir(where: str, cache_dir) -> None:
    if cache_dir is not None and Path(cache_dir).expanduser().exists() and not Path(cache_dir).expanduser().is_dir():
        raise ValueError(f"{where}: `cache_dir` {str(cache_dir)!r} is a file; give a folder (it is created if missing)")
