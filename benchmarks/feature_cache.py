#!/usr/bin/env python
"""Training-epoch time with and without the frozen-tower feature cache, on the demo's data and model.

The demo's setting (examples/demo.sh): fashion products, frozen EfficientNet-Lite0 (128x128) and
MiniLM towers, the I2MoE model with concat fusion, hidden 256, batch 128. One epoch over the first
`--num_samples` training products (default 512; 7671 is the whole split), once with the towers run
on every batch (the raw images and names through the processor) and once on cached tower outputs;
plus the one-off cost of computing the cache and of loading it on a later run.

    python benchmarks/feature_cache.py [--num_samples 512] [--threads 2]

Prints the figures and writes benchmarks/results/feature_cache.json. The machine's load average is
recorded: on a shared machine the absolute times vary run to run, the ratio much less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import run_classification  # noqa: E402  (the demo's dataset, towers and model)
from i2moe import I2MoEProcessor  # noqa: E402
from i2moe.caching import CachedFeaturesCollator, cache_tower_features  # noqa: E402


def train_one_epoch(model, dataset, collator, batch_size: int) -> float:
    """Seconds for one epoch: collate (processor or cached features), forward, backward, AdamW step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    start = time.perf_counter()
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_samples", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "feature_cache.json"))
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    model_args = run_classification.ModelArguments(method="i2moe", hidden_size=256, fusion="concat",
                                                   modality_dropout=0.3, image_size=128)
    task = run_classification.build_fashion(run_classification.DataArguments(), model_args)
    train = task.dataset["train"].select(range(min(arguments.num_samples, len(task.dataset["train"]))))
    model = run_classification.build_model(task, model_args, train["labels"])
    processor = I2MoEProcessor(task.processors, text_max_length=32)
    cached_names = [m.name for m in model.config.modalities if m.freeze]

    seconds = {"epoch_running_towers": train_one_epoch(model, train, CachedFeaturesCollator(processor, []),
                                                       arguments.batch_size)}
    with tempfile.TemporaryDirectory() as cache_dir:
        _, seconds["cache_compute_once"] = timed(lambda: cache_tower_features(
            model, processor, train, cache_dir=cache_dir, batch_size=128))
        cached, seconds["cache_load"] = timed(lambda: cache_tower_features(model, processor, train, cache_dir=cache_dir))
        seconds["epoch_on_cached_features"] = train_one_epoch(model, cached, CachedFeaturesCollator(processor, cached_names),
                                                              arguments.batch_size)

    full = len(task.dataset["train"])
    result = {
        "setting": "fashion products, frozen EfficientNet-Lite0 (128x128) + MiniLM, I2MoE, concat fusion, "
                   "hidden 256, batch 128, CPU",
        "num_samples": len(train), "batch_size": arguments.batch_size, "torch_threads": arguments.threads,
        "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "seconds": {key: round(value, 2) for key, value in seconds.items()},
        "speedup_per_epoch": round(seconds["epoch_running_towers"] / seconds["epoch_on_cached_features"], 1),
        f"estimated_full_epoch_seconds_({full}_samples)": {
            "running_towers": round(seconds["epoch_running_towers"] * full / len(train), 1),
            "on_cached_features": round(seconds["epoch_on_cached_features"] * full / len(train), 1),
        },
        "command": "python benchmarks/feature_cache.py " + " ".join(sys.argv[1:]),
    }
    Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.output).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
