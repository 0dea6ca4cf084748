"""Accuracy of I2MoE trained with perturbation subsampling (`config.i2moe.perturbation_fraction`)
against the full interaction loss, over seeds, on two small budgets:

- the planted tasks of `i2moe.synthetic` (`uniqueness`: sign of a[0]; `synergy`: XOR of signs;
  tiny concat I2MoE, batch 64, the step counts of `benchmarks/i2moe_synthetic_interactions.py`),
  held-out accuracy on 1024 samples;
- AV-MNIST (`i2moe.datasets_avmnist`, data in ../shared/data): LeNet towers of width 6, concat
  experts, the protocol of `benchmarks/avmnist_i2m2.py` (SGD 0.01, momentum 0.9, best validation
  epoch) on a small budget (`--train-samples`, `--epochs`), test accuracy.

    PYTHONPATH=src python benchmarks/i2moe_subsampling_accuracy.py --fractions 1.0 0.25 --seeds 0 1 2

Writes `benchmarks/results/i2moe_subsampling_accuracy.json`: rows {"task", "fraction", "seed",
"accuracy"} and one summary row per (task, fraction) with the mean and std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from argparse import Namespace
from pathlib import Path

import torch

from i2moe import I2MoEForClassification
from i2moe.configuration_i2moe import I2MOE_PAPER_OBJECTIVE
from i2moe.synthetic import interpret_synthetic, train_synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from avmnist_i2m2 import MODALITIES, accuracy, fit, load_tensors, model_config  # noqa: E402
from i2moe_synthetic_interactions import STEPS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_accuracy(task: str, fraction: float, seed: int) -> float:
    steps, lr = STEPS[task]
    model = train_synthetic(task, steps=steps, lr=lr, seed=seed,
                            i2moe={**I2MOE_PAPER_OBJECTIVE, "perturbation_fraction": fraction})
    return interpret_synthetic(model, task).summary()["accuracy"]


def avmnist_accuracy(fraction: float, seed: int, args) -> float:
    torch.manual_seed(seed)
    config = model_config(MODALITIES, width=6, method="i2moe", i2moe={"perturbation_fraction": fraction})
    model = I2MoEForClassification(config)
    data_args = Namespace(data_dir=args.data_dir, cache_dir=None, train_samples=args.train_samples,
                          val_samples=args.val_samples, test_samples=args.test_samples, snr_db=-10.0)
    data = load_tensors(data_args, [f"{modality}_pixel_values" for modality in MODALITIES])
    fit(model, data, lr=0.01, epochs=args.epochs, seed=seed, batch_size=args.batch_size, device=torch.device("cpu"),
        tag=f"i2moe fraction {fraction}")
    return accuracy(model, data["test"], torch.device("cpu"))


def summaries(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["fraction"]), []).append(row["accuracy"])
    return [{"task": task, "fraction": fraction, "summary": True, "seeds": len(values),
             "accuracy_mean": round(statistics.mean(values), 4),
             "accuracy_std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}
            for (task, fraction), values in groups.items()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["uniqueness", "synergy", "avmnist"],
                        choices=["uniqueness", "synergy", "avmnist"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[1.0, 0.25])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data-dir", default=None, help="AV-MNIST sources (default $I2MOE_DATA_DIR or ../shared/data)")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--val-samples", type=int, default=500)
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            for fraction in args.fractions:
                value = avmnist_accuracy(fraction, seed, args) if task == "avmnist" else \
                    synthetic_accuracy(task, fraction, seed)
                rows.append({"task": task, "fraction": fraction, "seed": seed, "accuracy": round(value, 4)})
                if task == "avmnist":
                    rows[-1]["budget"] = {"train_samples": args.train_samples, "epochs": args.epochs,
                                          "val_samples": args.val_samples, "test_samples": args.test_samples}
                print(json.dumps(rows[-1]), flush=True)
                RESULTS.mkdir(parents=True, exist_ok=True)
                (RESULTS / "i2moe_subsampling_accuracy.json").write_text(
                    json.dumps(rows + summaries(rows), indent=2) + "\n")
    for row in summaries(rows):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
