"""The I2M2 AV-MNIST table: unimodal, intra-only, inter-only and I2M2 models (LF and LRTF fusion),
and I2MoE with and without I2M2 heads when this package has `method="i2moe"`.

Staged training as in the I2M2 paper: the image-only and audio-only models (LeNet towers of width
3) and each inter model (LeNet towers of width 6) are trained separately and saved with
`save_pretrained` under `--work_dir`; the intra-only baseline and each I2M2 model are then
assembled from the saved folders with `I2MoEForClassification.from_i2m2_parts` and fine-tuned
jointly. Every model keeps the epoch with the best validation accuracy; test accuracy is reported
as mean and std over seeds. Models train as parallel single-threaded tasks (`--workers`); each
writes its test accuracy beside its weights, so an interrupted run can be resumed
(`--skip_done`) or tabulated (`--summarise_only`). The data are the offline AV-MNIST of
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
from i2moe.configuration_i2moe import I2MOE_PAPER_OBJECTIVE
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
    parser.add_argument("--i2moe_fusions", nargs="+", default=["concat"], choices=["concat", "lrtf"],
                        help="backbones of the I2MoE experts (when the package has method='i2moe')")
    parser.add_argument("--train_samples", type=int, default=4000, help="training rows used (of 55,000)")
    parser.add_argument("--val_samples", type=int, default=1000, help="validation rows for checkpoint selection")
    parser.add_argument("--test_samples", type=int, default=None, help="test rows (default: all 10,000)")
    parser.add_argument("--unimodal_epochs", type=int, default=4, help="epochs of the image-only and audio-only parts")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each inter part")
    parser.add_argument("--joint_epochs", type=int, default=1, help="epochs of joint fine-tuning of assembled models")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD (momentum 0.9) rate of the unimodal and inter parts")
    parser.add_argument("--joint_lr", type=float, default=0.001, help="SGD (momentum 0.9) rate of joint fine-tuning")
    parser.add_argument("--batch_size", type=int, default=40)
    parser.add_argument("--snr_db", type=float, default=AVMNISTRecipe.snr_db)
    parser.add_argument("--workers", type=int, default=6, help="models trained in parallel processes (one thread each)")
    parser.add_argument("--work_dir", default="/tmp/i2moe-avmnist-runs", help="where the trained parts are saved")
    parser.add_argument("--stage", default="all", choices=["all", "parts", "products"],
                        help="train the separate parts, the assembled products (from saved parts), or both")
    parser.add_argument("--skip_done", action="store_true", help="skip models whose results the work folder holds")
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
    if settings.get("method") == "i2moe":  # the rows of these benchmarks train the paper's I2MoE objective
        settings["i2moe"] = {**I2MOE_PAPER_OBJECTIVE, **(settings.get("i2moe") or {})}
    return I2MoEConfig(
        modalities=[{"name": name, "tower": I2MoELeNetConfig(base_channels=width, num_additional_layers=TOWER_LAYERS[name])}
                    for name in modalities],
        **settings,
    )


def load_tensors(args, columns: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The train / validation / test tensors of `columns` (and the labels)."""
    avmnist = load_avmnist(args.data_dir, seed=0, cache_dir=args.cache_dir, max_train_samples=args.train_samples,
                           snr_db=args.snr_db)
    limits = {"train": None, "validation": args.val_samples, "test": args.test_samples}
    data = {}
    for split, limit in limits.items():
        rows = avmnist[split] if limit is None else avmnist[split].select(range(min(limit, len(avmnist[split]))))
        data[split] = rows.select_columns([*columns, "labels"])[:]
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


def stage_tasks(args) -> tuple[list[tuple], list[tuple]]:
    """(seed, model, fusion) tasks: the separately trained parts, then the assembled products."""
    products = {"intra", "i2m2", "i2moe_i2m2"} & set(args.models)
    parts, assembled = [], []
    for seed in args.seeds:
        parts += [(seed, name, None) for name in MODALITIES if name in args.models or products]
        for inter_row, product_row, fusions in (("inter", "i2m2", args.fusions), ("i2moe", "i2moe_i2m2", args.i2moe_fusions)):
            for fusion in fusions:
                if inter_row in args.models or product_row in args.models:
                    parts.append((seed, inter_row, fusion))
                if product_row in args.models:
                    assembled.append((seed, product_row, fusion))
        if "intra" in args.models:
            assembled.append((seed, "intra", None))
    return parts, assembled


def task_folder(args, seed: int, name: str, fusion: str | None) -> Path:
    return Path(args.work_dir) / f"seed{seed}" / f"{name}-{fusion or 'none'}"


def run_task(task: tuple, args) -> tuple:
    """Train one model, save it with `save_pretrained` under the work folder, and return
    `(seed, "model/fusion", test accuracy)`. Products are assembled from the saved parts."""
    seed, name, fusion = task
    torch.set_num_threads(1)
    torch.manual_seed(seed)  # fixes the new weights of every model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key = f"{name}/{fusion or ''}"
    folder = task_folder(args, seed, name, fusion)
    saved = lambda row, row_fusion=None: str(task_folder(args, seed, row, row_fusion))
    if name in MODALITIES:
        model, lr, epochs = I2MoEForClassification(model_config((name,), width=3)), args.lr, args.unimodal_epochs
    elif name in ("inter", "i2moe"):
        method = "vanilla" if name == "inter" else "i2moe"
        config = model_config(MODALITIES, width=6, fusion=fusion, method=method)
        model, lr, epochs = I2MoEForClassification(config), args.lr, args.epochs
    else:  # the paper's staged initialisation: assemble the saved parts, fine-tune jointly
        unimodal = {modality: saved(modality) for modality in MODALITIES}
        inter = None if name == "intra" else saved("inter" if name == "i2m2" else "i2moe", fusion)
        model = I2MoEForClassification.from_i2m2_parts(unimodal, inter)
        lr, epochs = args.joint_lr, args.joint_epochs
    data = load_tensors(args, [f"{modality}_pixel_values" for modality in MODALITIES
                               if f"{modality}_pixel_values" in model.input_names])
    fit(model, data, lr=lr, epochs=epochs, seed=seed, batch_size=args.batch_size, device=device, tag=key)
    model.save_pretrained(folder)
    result = accuracy(model, data["test"], device)
    print(f"[seed {seed}] {key}: test {result:.4f}", flush=True)
    # Kept as it goes, so an interrupted run can still be tabulated (--summarise_only).
    (folder / "test_accuracy.json").write_text(json.dumps({key: result}))
    return seed, key, result


def collect_partials(args) -> dict[int, dict[str, float]]:
    per_seed: dict[int, dict[str, float]] = {}
    for path in sorted(Path(args.work_dir).glob("seed*/*/test_accuracy.json")):
        seed = int(path.parent.parent.name[4:])
        if seed in args.seeds:
            per_seed.setdefault(seed, {}).update(json.loads(path.read_text()))
    return per_seed


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
    if not args.summarise_only:
        load_tensors(args, [])  # build (or find) the cached dataset once, before the workers read it
        parts, assembled = stage_tasks(args)
        stages = {"all": (parts, assembled), "parts": (parts,), "products": (assembled,)}[args.stage]
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
            for stage in stages:  # the products need every saved part
                if args.skip_done:
                    stage = [task for task in stage if not (task_folder(args, *task) / "test_accuracy.json").exists()]
                list(pool.map(run_task, stage, [args] * len(stage)))
    per_seed = collect_partials(args)
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
