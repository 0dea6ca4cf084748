"""Why I2MoE fell below the fusion it wraps on AV-MNIST, by ablation, at a small budget.

Each row trains one model on the offline AV-MNIST (`i2moe.datasets_avmnist`, data seed 0) exactly
as `benchmarks/avmnist_i2m2.py` trains its inter models (LeNet towers of width 6, SGD momentum 0.9,
lr 0.01, weight decay 1e-4, gradient-norm clip 8, batch 40, the epoch with the best validation
accuracy kept) and scores it on the test rows: plain LF fusion (`vanilla`) beside I2MoE with LF
experts under one change each. For I2MoE it also records the mean expert weights and each
expert's own test accuracy (the collapse is one weight near 1 on the image expert).

Appends one JSON line per (variant, seed, budget) to `benchmarks/results/i2moe_ablation.jsonl`
(rerunning skips finished rows) and prints the medians over seeds:

    python benchmarks/i2moe_ablation.py --seeds 0 1 --train_samples 3000 --epochs 3
    python benchmarks/i2moe_ablation.py --seeds 0 1 --variants vanilla default expert_loss_1
    python benchmarks/i2moe_ablation.py --seeds 0 1 --xor   # does each expert still specialise?

`--xor` instead trains the tiny synthetic XOR I2MoE of `i2moe.synthetic` (300 steps at 3e-3, as
`tests/test_i2moe.py`) with expert task loss 0 and 1 and records each expert's own accuracy: with
the expert loss, do the uniqueness experts learn the interaction themselves?
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from avmnist_i2m2 import MODALITIES, accuracy, fit, model_config, model_inputs
from planted import append_row, finished_keys, median, read_rows

from i2moe import I2MoEForClassification
from i2moe.datasets_avmnist import AVMNISTRecipe, load_avmnist


RESULTS = Path(__file__).resolve().parent / "results" / "i2moe_ablation.jsonl"
# name: (method, I2MoE config overrides). Each I2MoE row changes one thing from `default`
# (the package defaults: lambda_int 0.1, noise perturbation, temperature 1, reweighting dropout 0.1; the
# paper's objective, which `avmnist_i2m2.model_config` pins for I2MoE).
VARIANTS = {
    "vanilla": ("vanilla", {}),
    "default": ("i2moe", {}),
    "lambda_0": ("i2moe", {"i2moe_lambda_int": 0.0}),
    "lambda_0.5": ("i2moe", {"i2moe_lambda_int": 0.5}),
    "perturbation_null": ("i2moe", {"i2moe_perturbation": "null"}),
    "perturbation_mean": ("i2moe", {"i2moe_perturbation": "mean"}),
    "temperature_2": ("i2moe", {"i2moe_temperature": 2.0}),
    "reweight_dropout_0.5": ("i2moe", {"i2moe_reweight_dropout": 0.5}),
    "warmup_1_epoch": ("i2moe", {"i2moe_reweight_warmup_steps": "epoch"}),
    "balance_0.1": ("i2moe", {"i2moe_balance_weight": 0.1}),
    "expert_loss_1": ("i2moe", {"i2moe_expert_loss_weight": 1.0}),
    "expert_loss_1_balance_0.1": ("i2moe", {"i2moe_expert_loss_weight": 1.0, "i2moe_balance_weight": 0.1}),
}


@torch.no_grad()
def expert_report(model: I2MoEForClassification, split: dict[str, torch.Tensor], batch_size: int = 500) -> dict:
    """Mean expert weight and each expert's own accuracy on `split`."""
    model.eval()
    weights, correct = [], 0
    for start in range(0, len(split["labels"]), batch_size):
        batch = {key: value[start:start + batch_size] for key, value in split.items()}
        out = model(**model_inputs(model, batch, "cpu"))
        weights.append(out.component_weights)
        correct = correct + (out.component_logits.argmax(-1) == batch["labels"][:, None]).sum(0)
    names = model.interaction.component_names
    mean_weight = torch.cat(weights).mean(0)
    return {"mean_weight": {name: round(float(value), 3) for name, value in zip(names, mean_weight)},
            "expert_accuracy": {name: round(float(value) / len(split["labels"]), 4) for name, value in zip(names, correct)}}


def load_splits(args) -> dict[str, dict[str, torch.Tensor]]:
    """The first `train_samples` training rows and `val_samples` / `test_samples` evaluation rows,
    built with `max_eval_samples` (so only those rows are built: the full test split costs minutes)."""
    avmnist = load_avmnist(args.data_dir, seed=0, cache_dir=args.cache_dir, max_train_samples=args.train_samples,
                           max_eval_samples=max(args.val_samples, args.test_samples), snr_db=args.snr_db)
    columns = [*(f"{modality}_pixel_values" for modality in MODALITIES), "labels"]
    limits = {"train": args.train_samples, "validation": args.val_samples, "test": args.test_samples}
    return {split: avmnist[split].select(range(limit)).select_columns(columns)[:] for split, limit in limits.items()}


def run(variant: str, seed: int, args) -> dict:
    method, overrides = VARIANTS[variant]
    if overrides.get("i2moe.reweight_warmup_steps") == "epoch":
        overrides = {**overrides, "i2moe_reweight_warmup_steps": -(-args.train_samples // args.batch_size)}
    torch.manual_seed(seed)
    model = I2MoEForClassification(model_config(MODALITIES, width=6, method=method, **overrides))
    data = load_splits(args)
    fit(model, data, lr=args.lr, epochs=args.epochs, seed=seed, batch_size=args.batch_size, device="cpu", tag=variant)
    row = {"validation_accuracy": round(accuracy(model, data["validation"], "cpu"), 4),
           "test_accuracy": round(accuracy(model, data["test"], "cpu"), 4), "overrides": overrides}
    if method == "i2moe":
        row.update(expert_report(model, data["test"]))
    return row


def run_xor(expert_loss_weight: float, seed: int) -> dict:
    from i2moe.synthetic import interpret_synthetic, train_synthetic

    model = train_synthetic("synergy", steps=300, lr=3e-3, seed=seed, i2moe_expert_loss_weight=expert_loss_weight)
    summary = interpret_synthetic(model, "synergy").summary()
    return {"test_accuracy": round(summary["accuracy"], 4),
            "expert_accuracy": {name: round(value, 3) for name, value in summary["component_accuracy"].items()},
            "mean_weight": {name: round(value, 3) for name, value in summary["overall"]["mean_weight"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--train_samples", type=int, default=3000)
    parser.add_argument("--val_samples", type=int, default=1000)
    parser.add_argument("--test_samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch_size", type=int, default=40)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--snr_db", type=float, default=AVMNISTRecipe.snr_db)
    parser.add_argument("--xor", action="store_true", help="the synthetic XOR specialisation check instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.xor:
        done = finished_keys(RESULTS, ("variant", "seed", "budget"))
        for weight in (0.0, 1.0):
            for seed in args.seeds:
                key = (f"xor_expert_loss_{weight:g}", seed, "synthetic-xor-300steps")
                if key not in done:
                    row = {"variant": key[0], "seed": seed, "budget": key[2], **run_xor(weight, seed)}
                    append_row(RESULTS, row)
                    print(row, flush=True)
        return
    budget = f"{args.train_samples}rows-{args.epochs}ep"
    key_fields = ("variant", "seed", "budget")
    done = finished_keys(RESULTS, key_fields)
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed, budget) in done:
                continue
            start = time.time()
            row = {"variant": variant, "seed": seed, "budget": budget, **run(variant, seed, args),
                   "seconds": round(time.time() - start, 1)}
            append_row(RESULTS, row)
            print(row, flush=True)
    summarise(budget)


def summarise(budget: str) -> None:
    rows = [row for row in read_rows(RESULTS) if row["budget"] == budget]
    baseline = {row["seed"]: row["test_accuracy"] for row in rows if row["variant"] == "vanilla"}
    for variant in VARIANTS:
        group = [row for row in rows if row["variant"] == variant]
        if not group:
            continue
        gaps = [row["test_accuracy"] - baseline[row["seed"]] for row in group if row["seed"] in baseline]
        image_weight = [row["mean_weight"]["uniqueness_image"] for row in group if "mean_weight" in row]
        print(f"{variant:28s} median test {median([row['test_accuracy'] for row in group]):.4f} "
              f"(seeds {[row['seed'] for row in group]}), median gap to vanilla {median(gaps) if gaps else float('nan'):+.4f}, "
              f"image-expert weight {np.round(image_weight, 2).tolist()}")


if __name__ == "__main__":
    main()
