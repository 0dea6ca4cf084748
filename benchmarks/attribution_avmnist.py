"""The interaction attribution of a small AV-MNIST model, per class, beside the published PID estimate.

Trains the vanilla late-fusion model of `benchmarks/avmnist_i2m2.py` (LeNet towers of width 6,
concat fusion) on the first `--train_samples` AV-MNIST training rows with modality dropout 0.3
(`i2moe.synthetic.random_modality_mask`), SGD with momentum, then attributes `--test_samples`
test rows with the training label frequencies as the prior. Reports the dataset means in bits
(nats / ln 2) beside Liang et al. 2023's PID estimate for AV-MNIST (R 0.17, U_image 1.39,
U_audio 0.04, S 0.26 bits; a dataset-level estimate from their own classifiers and data).

    PYTHONPATH=src python benchmarks/attribution_avmnist.py     # writes benchmarks/results/attribution_avmnist.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from avmnist_i2m2 import load_tensors, model_config
from i2moe import I2MoEForClassification
from i2moe.attribution import attribute
from i2moe.synthetic import random_modality_mask


RESULTS = Path(__file__).resolve().parent / "results"
PUBLISHED_PID_BITS = {"redundancy": 0.17, "uniqueness_image": 1.39, "uniqueness_audio": 0.04, "synergy": 0.26}


def train(model, train_split, epochs: int, lr: float, batch_size: int, dropout: float, seed: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    inputs = [key for key in train_split if key != "labels"]
    model.train()
    for epoch in range(epochs):
        started = time.time()
        order = torch.randperm(len(train_split["labels"]), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            mask = random_modality_mask(len(rows), model.config.num_modalities, dropout, generator)
            batch = {key: train_split[key][rows] for key in inputs}
            model(**batch, modality_mask=mask, labels=train_split["labels"][rows]).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 8.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        print(f"epoch {epoch + 1}/{epochs} ({time.time() - started:.0f}s)", flush=True)
    model.config.modality_dropout = dropout
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--train_samples", type=int, default=4000)
    parser.add_argument("--test_samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch_size", type=int, default=40)
    parser.add_argument("--modality_dropout", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = load_tensors(_loader_args(args), ["image_pixel_values", "audio_pixel_values"])
    model = I2MoEForClassification(model_config(("image", "audio"), width=6))
    train(model, data["train"], args.epochs, args.lr, args.batch_size, args.modality_dropout, args.seed)
    prior = np.bincount(data["train"]["labels"].numpy(), minlength=10)
    test = data["test"]
    samples = [dict(zip(test, values)) for values in zip(*test.values())]
    result = attribute(model, samples, batch_size=250, prior=prior, progress=False)
    summary = result.summary()
    bits = {name: value / math.log(2) for name, value in summary["overall"]["mean"].items()}
    per_class_bits = {label: {name: round(value / math.log(2), 3) for name, value in stats["mean"].items()}
                      for label, stats in summary["per_class"].items()}
    accuracy = float((result.predictions == result.labels).mean())
    print(f"test accuracy {accuracy:.3f}; mean attribution (bits): "
          + ", ".join(f"{name} {value:.2f}" for name, value in bits.items())
          + "; published PID (bits): " + ", ".join(f"{k} {v}" for k, v in PUBLISHED_PID_BITS.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "attribution_avmnist.json").write_text(json.dumps({
        "command": "PYTHONPATH=src python benchmarks/attribution_avmnist.py", "settings": vars(args),
        "test_accuracy": round(accuracy, 4), "mean_bits": {k: round(v, 3) for k, v in bits.items()},
        "mean_information_bits": round(summary["mean_information"] / math.log(2), 3),
        "per_class_bits": per_class_bits, "published_pid_bits": PUBLISHED_PID_BITS,
        "prior_source": summary["prior_source"],
    }, indent=1) + "\n")


def _loader_args(args) -> argparse.Namespace:
    """The settings `avmnist_i2m2.load_tensors` reads."""
    from i2moe.datasets_avmnist import AVMNISTRecipe

    return argparse.Namespace(data_dir=args.data_dir, cache_dir=args.cache_dir, train_samples=args.train_samples,
                              val_samples=1, test_samples=args.test_samples, snr_db=AVMNISTRecipe.snr_db)


if __name__ == "__main__":
    main()
