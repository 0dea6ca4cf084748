"""Where the real datasets live, and the error a user sees when they are not there."""

from __future__ import annotations

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
    if not (root / required).exists():
        raise FileNotFoundError(
            f"{root / required} not found. Download it from {source} and place it under {root}, or point "
            f"--data_dir / ${DATA_DIR_ENV} at the folder that holds `{required}`."
        )
    return root
