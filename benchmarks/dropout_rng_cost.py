"""What a dropout mask costs on CPU: `F.dropout` (one `bernoulli_` draw per element) against the
multiply alone and against cheaper random sources, on one activation of the I2MoE benchmark
(`(64 x 48, 512)` floats: a batch of 64 at M = 3, 16 tokens each, MLP width 2d = 512). Medians of
alternated calls, one process.

    python benchmarks/dropout_rng_cost.py   # writes benchmarks/results/dropout_rng_cost_cpu.json
"""

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def main(steps: int = 30) -> None:
    torch.set_num_threads(1)
    x = torch.randn(64 * 48, 512)
    mask = torch.rand_like(x) > 0.1
    candidates = {
        "F.dropout(p=0.1)": lambda: F.dropout(x, 0.1, training=True),
        "bernoulli_ mask only": lambda: torch.empty_like(x).bernoulli_(0.9),
        "rand_like > p": lambda: torch.rand_like(x) > 0.1,
        "randint uint8 > 25": lambda: torch.randint(0, 256, x.shape, dtype=torch.uint8) > 25,
        "multiply by a given mask": lambda: x * mask / 0.9,
        "gelu (for scale)": lambda: F.gelu(x),
    }
    times = {name: [] for name in candidates}
    for _ in range(steps):
        for name, fn in candidates.items():
            begin = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - begin) * 1e3)
    rows = [{"op": name, "median_ms": round(statistics.median(values), 3), "shape": list(x.shape), "threads": 1}
            for name, values in times.items()]
    for row in rows:
        print(json.dumps(row))
    (RESULTS / "dropout_rng_cost_cpu.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
