"""What I2MoE's weights say on synthetic tasks with a known interaction (`i2moe.synthetic`).

For each task (`uniqueness`: label = sign of a feature of modality a; `synergy`: label = XOR of
one feature of each modality), perturbation, λ_int and seed, trains the tiny concat I2MoE and
records the dataset-level dominant type (largest mean weight), the model's accuracy, each
expert's own accuracy, and how hard the reweighting model routes (the mean of each sample's
largest weight, and the dominant expert in each of the four sign quadrants of (a[0], b[0])).

Writes `benchmarks/results/i2moe_synthetic_interactions.json` and prints one line per
configuration (about 2 s per run on one CPU core):

    python benchmarks/i2moe_synthetic_interactions.py
    python benchmarks/i2moe_synthetic_interactions.py --seeds 0 1 2 --perturbations mean --lambdas 0.5
    python benchmarks/i2moe_synthetic_interactions.py --lambdas 0.5 --guidance 1 3 \
        --output i2moe_synthetic_guided.json          # with the label-guided interaction losses
    python benchmarks/i2moe_synthetic_interactions.py --tasks synergy --perturbations noise --lambdas 0.5 \
        --guidance 3 --lr 1e-2 --output i2moe_synthetic_guided_lr1e-2.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from i2moe.configuration_i2moe import PERTURBATIONS
from i2moe.synthetic import SYNTHETIC_TASKS, dominant_by_quadrant, interpret_synthetic, train_synthetic


RESULTS = Path(__file__).resolve().parent / "results"
EXPECTED = {"uniqueness": "uniqueness_a", "synergy": "synergy"}
STEPS = {"uniqueness": (100, 1e-2), "synergy": (300, 3e-3)}  # (steps, Adam lr): each task is learned by then


def run(task: str, perturbation: str, lambda_int: float, guidance: float, seed: int, lr: float | None = None) -> dict:
    steps, task_lr = STEPS[task]
    lr = task_lr if lr is None else lr
    model = train_synthetic(task, steps=steps, lr=lr, seed=seed,
                            i2moe={"perturbation": perturbation, "lambda_int": lambda_int,
                                   "reweight_dropout": 0.0, "label_guidance_weight": guidance})
    result = interpret_synthetic(model, task)
    summary = result.summary()
    row = {
        "task": task, "perturbation": perturbation, "lambda_int": lambda_int, "label_guidance_weight": guidance,
        "seed": seed, "steps": steps, "lr": lr,
        "dominant_type": summary["dominant_type"],
        "mean_weight": _rounded(summary["overall"]["mean_weight"]),
        "accuracy": round(summary["accuracy"], 4),
        "component_accuracy": _rounded(summary["component_accuracy"]),
        "mean_max_weight": round(float(result.weights.max(-1).mean()), 3),
        "quadrant_dominant": dominant_by_quadrant(result, task),
    }
    return row


def _rounded(values: dict) -> dict:
    return {name: round(value, 3) for name, value in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(SYNTHETIC_TASKS), default=["uniqueness", "synergy"])
    parser.add_argument("--perturbations", nargs="+", choices=PERTURBATIONS, default=["noise", "mean", "null"])
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.5, 2.0])
    parser.add_argument("--guidance", nargs="+", type=float, default=[0.0],
                        help="values of `i2moe.label_guidance_weight` (0: the paper's objective)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--lr", type=float, default=None, help="Adam's learning rate for every task (default: per task)")
    parser.add_argument("--output", default="i2moe_synthetic_interactions.json", help="file name under results/")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead

    rows = []
    for task, perturbation, lambda_int, guidance in itertools.product(args.tasks, args.perturbations, args.lambdas,
                                                                      args.guidance):
        group = [run(task, perturbation, lambda_int, guidance, seed, args.lr) for seed in args.seeds]
        rows += group
        wins = sum(row["dominant_type"] == EXPECTED[task] for row in group)
        best_alone = np.mean([max(row["component_accuracy"].values()) for row in group])
        print(f"{task:10s} {perturbation:5s} λ={lambda_int:<4} guidance {guidance:<4} {EXPECTED[task]} dominant in {wins}/{len(group)} seeds; "
              f"model accuracy {np.mean([r['accuracy'] for r in group]):.3f}, best expert alone {best_alone:.3f}, "
              f"mean max weight {np.mean([r['mean_max_weight'] for r in group]):.2f}; dominant: "
              f"{[row['dominant_type'] for row in group]}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
