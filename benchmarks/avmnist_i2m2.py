"""The I2M2 AV-MNIST table: unimodal, intra-only, inter-only and I2M2 models (LF and LRTF fusion),
and I2MoE with and without I2M2 heads when this package has `method="i2moe"`.

Staged training as in the I2M2 paper: the image-only and audio-only models (LeNet towers of width
3) and each inter model (LeNet towers of width 6) are trained separately; the intra-only baseline
and each I2M2 model are then assembled from the trained parts with
`I2MoEForClassification.from_i2m2_parts` and fine-tuned jointly. Every model keeps the epoch with
the best validation accuracy; test accuracy is reported as mean and std over seeds (seeds run in
parallel worker processes, one thread each). The data are the offline AV-MNIST of
`i2moe.datasets_avmnist` (built once with the data seed 0, then cached); model seeds vary.

    PYTHONPATH=src python benchmarks/avmnist_i2m2.py                    # the table (3 seeds)
    PYTHONPATH=src python benchmarks/avmnist_i2m2.py --seeds 0 --models image audio   # calibration

Writes benchmarks/results/avmnist.json: a list of rows {"model", "fusion", "accuracy_mean",
"accuracy_std", "seeds", "accuracies"}. docs/i2m2.md explains the protocol and the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from i2moe import I2MoEConfig, I2MoEForClassification, I2MoELeNetConfig
from i2moe.configuration_i2moe import METHODS
from i2moe.datasets_avmnist import AVMNISTRecipe, load_avmnist


# LeNet depth per modality (MultiBench / I2M2): image 3 extra 3x3 blocks (28 -> 1), audio 5 (112 -> 1).
TOWER_LAYERS = {"image": 3, "audio": 5}
MODALITIES = ("image", "audio")
# Rows of the table, in order: (model, fusion); fusion None for the unimodal rows.
ALL_MODELS = ("image", "audio", "intra", "inter", "i2m2", "i2moe", "i2moe_i2m2")
ROW_NAMES = {"image": "image-only", "audio": "audio-only", "intra": "intra (product of unimodal)",
             "inter": "inter", "i2m2": "I2M2", "i2moe": "I2MoE", "i2moe_i2m2": "I2MoE + I2M2 heads"}
FUSION_NAMES = {"concat": "LF", "lrtf": "LRTF"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=None, help="folder with mnist/ and fsdd/ (default $I2MOE_DATA_DIR or ../shared/data)")
    parser.add_argument("--cache_dir", default=None, help="AV-MNIST build cache (default ~/.cache/i2moe/avmnist)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(ALL_MODELS), choices=ALL_MODELS)
    parser.add_argument("--fusions", nargs="+", default=["concat", "lrtf"], choices=["concat", "lrtf"])
    parser.add_argument("--train_samples", type=int, default=6000, help="training rows used (of 55,000)")
    parser.add_argument("--val_samples", type=int, default=2000, help="validation rows for checkpoint selection")
    parser.add_argument("--test_samples", type=int, default=None, help="test rows (default: all 10,000)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each separately trained part")
    parser.add_argument("--joint_epochs", type=int, default=2, help="epochs of joint fine-tuning of assembled models")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD (momentum 0.9) rate of the unimodal and inter parts")
    parser.add_argument("--joint_lr", type=float, default=0.001, help="SGD (momentum 0.9) rate of joint fine-tuning")
    parser.add_argument("--batch_size", type=int, default=40)
    parser.add_argument("--snr_db", type=float, default=AVMNISTRecipe.snr_db)
    parser.add_argument("--workers", type=int, default=3, help="seeds trained in parallel processes")
    parser.add_argument("--summarise_only", action="store_true",
                        help="only tabulate the per-seed results an earlier (possibly interrupted) run kept")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "avmnist.json"))
    return parser.parse_args()


def model_config(modalities: tuple[str, ...], width: int, **overrides) -> I2MoEConfig:
    """LeNet towers of `width` base channels; MLP heads of width 100 (the paper's MLP(in, 100, 10));
    LRTF rank 40 and output 120 (the paper's)."""
    settings = dict(hidden_size=64, fusion="concat", fusion_hidden_size=100, lrtf_rank=40, lrtf_output_size=120,
                    dropout=0.0, num_labels=10, problem_type="single_label_classification")
    settings.update(overrides)
    return I2MoEConfig(
        modalities=[{"name": name, "tower": I2MoELeNetConfig(base_channels=width, num_additional_layers=TOWER_LAYERS[name])}
                    for name in modalities],
        **settings,
    )


def load_tensors(args) -> dict[str, dict[str, torch.Tensor]]:
    avmnist = load_avmnist(args.data_dir, seed=0, cache_dir=args.cache_dir, max_train_samples=args.train_samples,
                           snr_db=args.snr_db)
    data = {split: avmnist[split][:] for split in ("train", "validation", "test")}
    data["validation"] = {key: value[: args.val_samples] for key, value in data["validation"].items()}
    data["test"] = {key: value[: args.test_samples] for key, value in data["test"].items()}
    return data


def model_inputs(model: I2MoEForClassification, batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items() if key in model.input_names}


@torch.no_grad()
def accuracy(model: I2MoEForClassification, split: dict[str, torch.Tensor], device, batch_size: int = 500) -> float:
    model.eval()  # BatchNorm uses its running statistics (the reference evaluated in train mode)
    correct = 0
    for start in range(0, len(split["labels"]), batch_size):
        batch = {key: value[start:start + batch_size] for key, value in split.items()}
        logits = model(**model_inputs(model, batch, device)).logits
        correct += (logits.argmax(-1).cpu() == batch["labels"]).sum().item()
    return correct / len(split["labels"])


def fit(model, data, *, lr: float, epochs: int, seed: int, batch_size: int, device, tag: str):
    """SGD (momentum 0.9, weight decay 1e-4, gradient-norm clip 8 *before* the step), keeping the
    epoch with the best validation accuracy."""
    model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                                weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    train, best_accuracy, best_state = data["train"], -1.0, None
    started = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train["labels"]), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = {key: value[rows] for key, value in train.items()}
            loss = model(**model_inputs(model, batch, device), labels=batch["labels"].to(device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 8.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        validation = accuracy(model, data["validation"], device)
        print(f"[seed {seed}] {tag} epoch {epoch + 1}/{epochs}: validation {validation:.4f} "
              f"({time.time() - started:.0f}s)", flush=True)
        if validation > best_accuracy:
            best_accuracy, best_state = validation, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval()


def run_seed(seed: int, args) -> dict[str, float]:
    """Test accuracy of every requested row for one model seed: `{"model/fusion": accuracy}`."""
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_tensors(args)
    results: dict[str, float] = {}

    def train(config_or_model, tag: str, *, lr: float, epochs: int):
        torch.manual_seed(seed)
        model = config_or_model if isinstance(config_or_model, I2MoEForClassification) else I2MoEForClassification(config_or_model)
        return fit(model, data, lr=lr, epochs=epochs, seed=seed, batch_size=args.batch_size, device=device, tag=tag)

    def record(key: str, model) -> None:
        results[key] = accuracy(model, data["test"], device)
        print(f"[seed {seed}] {key}: test {results[key]:.4f}", flush=True)
        # Kept as it goes, so an interrupted run can still be summarised (--summarise_only).
        partial = partial_path(args, seed)
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(results, indent=2))

    products = {"intra", "i2m2", "i2moe_i2m2"} & set(args.models)
    unimodal = {}
    for name in MODALITIES:
        if name in args.models or products:
            unimodal[name] = train(model_config((name,), width=3), f"{name}-only", lr=args.lr, epochs=args.epochs)
            record(f"{name}/", unimodal[name])
    if "intra" in args.models:
        intra = I2MoEForClassification.from_i2m2_parts(unimodal)
        record("intra/", train(intra, "intra", lr=args.joint_lr, epochs=args.joint_epochs))
    inter_methods = [("inter", "i2m2", "vanilla")]
    if "i2moe" in METHODS:
        inter_methods.append(("i2moe", "i2moe_i2m2", "i2moe"))
    for inter_row, product_row, method in inter_methods:
        if inter_row not in args.models and product_row not in args.models:
            continue
        for fusion in args.fusions:
            inter = train(model_config(MODALITIES, width=6, fusion=fusion, method=method), f"{inter_row}-{fusion}",
                          lr=args.lr, epochs=args.epochs)
            record(f"{inter_row}/{fusion}", inter)
            if product_row in args.models:
                product = I2MoEForClassification.from_i2m2_parts(unimodal, inter)
                record(f"{product_row}/{fusion}",
                       train(product, f"{product_row}-{fusion}", lr=args.joint_lr, epochs=args.joint_epochs))
    return results


def partial_path(args, seed: int) -> Path:
    return Path(args.output).with_suffix(".partial") / f"seed{seed}.json"


def summarise(per_seed: dict[int, dict[str, float]], models: list[str]) -> list[dict]:
    rows = []
    keys = list(dict.fromkeys(key for results in per_seed.values() for key in results))
    for key in sorted(keys, key=lambda key: ALL_MODELS.index(key.split("/")[0])):
        model, fusion = key.split("/")
        if model not in models:
            continue
        seeds = sorted(seed for seed, results in per_seed.items() if key in results)
        accuracies = [per_seed[seed][key] for seed in seeds]
        rows.append({
            "model": ROW_NAMES[model],
            "fusion": FUSION_NAMES.get(fusion),
            "accuracy_mean": round(100 * statistics.fmean(accuracies), 2),
            "accuracy_std": round(100 * statistics.stdev(accuracies), 2) if len(accuracies) > 1 else 0.0,
            "seeds": seeds,
            "accuracies": [round(100 * value, 2) for value in accuracies],
        })
    return rows


def main() -> None:
    args = parse_args()
    started = time.time()
    if args.summarise_only:
        per_seed = {seed: json.loads(partial_path(args, seed).read_text()) for seed in args.seeds
                    if partial_path(args, seed).exists()}
    else:
        load_tensors(args)  # build (or find) the cached dataset once, before the workers read it
        with ProcessPoolExecutor(max_workers=min(args.workers, len(args.seeds)), mp_context=get_context("spawn")) as pool:
            per_seed = dict(zip(args.seeds, pool.map(run_seed, args.seeds, [args] * len(args.seeds))))
    rows = summarise(per_seed, args.models)
    print(f"\nAV-MNIST test accuracy (%), {len(args.seeds)} seed(s), {time.time() - started:.0f}s")
    print(f"{'model':34s} {'fusion':6s} accuracy")
    for row in rows:
        print(f"{row['model']:34s} {row['fusion'] or '-':6s} {row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
