"""The results suite of issue 14: every method beside the plain baseline, per (row, seed), resumable.

Rows (`--suite`):
- `planted2` / `planted3`: the planted kinds of `benchmarks/planted.py` for 2 and 3 modalities
  (uniqueness of each modality, redundancy, pairwise synergy, and for 3 the synergy of all three),
  4,000 training / 1,000 validation / 2,000 test samples, modality dropout 0.3; methods `vanilla`
  (concat fusion), `i2moe` (concat experts, the paper's objective), `i2moe_xl` (the same with each
  expert's own task loss, `i2moe.expert_loss_weight=1`), `i2moe_guided` (with the label-guided
  interaction losses at weight 3: the package's default objective), `i2m2` (vanilla + I2M2 unimodal heads, trained jointly
  from scratch), `dmil` (the three stages of `DEFAULT_DMIL_STAGES`). 30 epochs for every method
  (DMIL: 10 / 5 / 15 over its stages), AdamW, the best validation epoch kept.
- `avmnist`: AV-MNIST (`i2moe.datasets_avmnist`, data seed 0), LeNet towers (image 3 extra blocks,
  audio 5) trained from scratch; rows `image`, `audio`, `ensemble` (mean probability of those two),
  `vanilla_lf`, `vanilla_lrtf`, `i2moe_lf`, `i2moe_lrtf`, `i2moe_xl_lf`, `i2moe_xl_lrtf`, `i2m2_lf`, `i2m2_lrtf` (I2M2 heads and
  the fusion trained jointly from scratch), `dmil`; `--avmnist_epochs` epochs each (DMIL: the
  default stages scaled to that budget; `dmil_late`: 4 / 1 / 10 of 15), AdamW at `--avmnist_lr`.
- `fashion`: the demo's products with frozen EfficientNet-Lite0 + MiniLM features, cached once.
- Staged rows (both suites), fine-tuned from trained parts saved under `--parts_dir`:
  `i2m2_staged_<fusion>` (I2M2 as its paper trains it: the unimodal models and the fusion trained
  separately, their product fine-tuned jointly), `i2m2_product_<fusion>` (that product before any
  fine-tuning), `i2moe_warm_<fusion>` (I2MoE whose experts all start
  as the trained fusion), `vanilla_warm_<fusion>` (that fusion fine-tuned by the same schedule).

Each finished (suite, kind, method, seed, budget) appends a JSON line to
`benchmarks/results/methods_suite.jsonl`; rerunning skips finished rows, so the suite resumes where
it stopped and a later session can add seeds or a larger budget (`--avmnist_train 10000`).

    python benchmarks/methods_suite.py --suite planted2 --seeds 0 1
    python benchmarks/methods_suite.py --suite planted3 --seeds 0 1
    python benchmarks/methods_suite.py --suite avmnist --seeds 0 --avmnist_train 3000 --avmnist_epochs 4
    python benchmarks/methods_suite.py --summarise      # the tables, from the JSON lines
    python benchmarks/methods_suite.py --markdown       # the same as markdown (docs)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from planted import (append_row, evaluate, finished_keys, median, planted_config, planted_data, planted_kinds,
                     read_rows, train_dmil, train_epochs)

from i2moe import I2MoEConfig, I2MoEForClassification, I2MoELeNetConfig
from i2moe.configuration_i2moe import DMIL_PAPER_STAGE3_WEIGHTS, I2MOE_PAPER_OBJECTIVE
from i2moe.dmil_training import DEFAULT_DMIL_STAGES


RESULTS = Path(__file__).resolve().parent / "results" / "methods_suite.jsonl"
KEY_FIELDS = ("suite", "kind", "method", "seed", "budget")
PLANTED_METHODS = ("vanilla", "i2moe", "i2moe_xl", "i2m2", "dmil")
# I2MoE with the paper's objective (no expert task loss, no label-guided losses) and its variants, each
# pinned here, so a row means the same whatever the package default (since format version 3 the
# default is `i2moe_guided`'s).
PAPER = {"expert_loss_weight": 0.0, **I2MOE_PAPER_OBJECTIVE}
I2MOE_SETTINGS = {"i2moe": {"i2moe": PAPER},
                  # each expert's own task loss (weight 1, issue 14)
                  "i2moe_xl": {"i2moe": {**PAPER, "expert_loss_weight": 1.0}},
                  # issue 15: the perturbed passes on a quarter of each batch's rows
                  "i2moe_sub25": {"i2moe": {**PAPER, "perturbation_fraction": 0.25}},
                  # the reference code's default interaction-loss weight (its train scripts: 1e-2; ours 0.1)
                  "i2moe_lambda001": {"i2moe": {**PAPER, "lambda_int": 0.01}},
                  # no interaction loss: the experts and the reweighting model trained by the mixture's task
                  # loss alone (separates what the mixture adds from what the interaction losses cost)
                  "i2moe_lambda0": {"i2moe": {**PAPER, "lambda_int": 0.0}},
                  # the MoE remedies for a collapsing mixture (issue 14), at the converged AV-MNIST budget: a
                  # load-balancing term, and equal weights for the first 2 epochs (2 x 157 steps of 64 rows)
                  "i2moe_balance": {"i2moe": {**PAPER, "balance_weight": 0.1}},
                  "i2moe_eqwarm": {"i2moe": {**PAPER, "reweight_warmup_steps": 314}},
                  # the uniqueness triplet on unit-normalised logits (scale-free: the raw-logit margin was met by
                  # bimodal "uniqueness" experts on AV-MNIST seeds 5-7)
                  "i2moe_normuni": {"i2moe": {**PAPER, "uniqueness_distance": "normalized"}},
                  # the label-guided interaction losses beside the paper's (the package default since): weight
                  # 3, chosen on the synthetic XOR (docs/i2moe.md); `i2moe_guided1` checks the choice
                  "i2moe_guided": {"i2moe": {**PAPER, "label_guidance_weight": 3.0}},
                  "i2moe_guided1": {"i2moe": {**PAPER, "label_guidance_weight": 1.0}}}
PLANTED_EPOCHS, PLANTED_LR, BATCH, DROPOUT = 30, 1e-3, 64, 0.3
PLANTED_SIZES = (4000, 1000, 2000)
# `ensemble` also writes the `image`, `audio` and `intra` rows (from the same two unimodal models).
AVMNIST_METHODS = ("ensemble", "vanilla_lf", "i2moe_lf", "dmil", "i2m2_lf", "vanilla_lrtf", "i2moe_lrtf", "i2m2_lrtf",
                   "vanilla_transformer", "i2moe_transformer", "i2moe_i2m2_lf", "i2m2_product_lf", "i2m2_staged_lf",
                   "i2m2_product_lrtf", "i2m2_staged_lrtf")
TOWER_LAYERS = {"image": 3, "audio": 5}  # extra LeNet blocks at full resolution (28x28 image, 112x112 audio)


# DMIL variants: each stage's share of the epochs (scaled to the budget), each stage's learning rate,
# and `dmil` config overrides. `dmil`: `DEFAULT_DMIL_STAGES` (10 / 5 / 15 at 4e-3 / 1e-3 / 1e-3) and
# the paper's stage-3 weights. `dmil_late` (4 / 1 / 10 of 15): more of the budget on stage 3, the only stage
# that trains the towers on the fused prediction (stage-3 validation still rose at its last epoch on
# AV-MNIST). `dmil_fast2`: stage 2 at the stage-1 rate (on fashion, stage 2's level 2 from scratch
# reached only 76-83% validation in its 3 epochs at 1e-3). `dmil_wide`: latents of 128 instead of 32
# (fashion has 40 classes). `dmil_lowkl`: KL weight 0.002 instead of 0.02 (less squeezed latents).
# `dmil_fused` (the package defaults since): stage 3's per-component and level-1 cross-entropies at 0.1
# instead of the paper's 0.8 / 0.5, so that the fused prediction carries most of stage 3's gradient
# (with the paper's, 1 of the 1 + 4 * 0.8 + 2 * 0.5 units of the loss for two modalities). `dmil_mean`:
# 0.2 / 0.25, the paper's weights on the mean over the 4 components / 2 heads instead of the sum.
_DEFAULT_SPLIT = tuple(stage.num_train_epochs for stage in DEFAULT_DMIL_STAGES)
_DEFAULT_RATES = tuple(stage.learning_rate for stage in DEFAULT_DMIL_STAGES)
# Stage 3's component / level-1 cross-entropy weights: the paper's (the package default until issue 14's
# `dmil_fused` rows) and the package's since; pinned per variant, so a row means the same whatever the default.
PAPER_STAGE3 = DMIL_PAPER_STAGE3_WEIGHTS
FUSED_STAGE3 = {"stage3_component_weight": 0.1, "stage3_unimodal_weight": 0.1}
MEAN_STAGE3 = {"stage3_component_weight": 0.2, "stage3_unimodal_weight": 0.25}
DMIL_VARIANTS = {"dmil": (_DEFAULT_SPLIT, _DEFAULT_RATES, PAPER_STAGE3),
                 "dmil_late": ((4, 1, 10), _DEFAULT_RATES, PAPER_STAGE3),
                 "dmil_fast2": (_DEFAULT_SPLIT, (_DEFAULT_RATES[0], _DEFAULT_RATES[0], _DEFAULT_RATES[2]), PAPER_STAGE3),
                 "dmil_wide": (_DEFAULT_SPLIT, _DEFAULT_RATES, {**PAPER_STAGE3, "latent_size": 128}),
                 "dmil_lowkl": (_DEFAULT_SPLIT, _DEFAULT_RATES, {**PAPER_STAGE3, "kl_weight": 0.002}),
                 "dmil_fused": (_DEFAULT_SPLIT, _DEFAULT_RATES, FUSED_STAGE3),
                 "dmil_mean": (_DEFAULT_SPLIT, _DEFAULT_RATES, MEAN_STAGE3)}


def dmil_stages(total_epochs: int, variant: str = "dmil") -> list[tuple[int, float]]:
    """The (epochs, lr) of each stage of DMIL `variant`, its epoch shares scaled to `total_epochs`, at least 1 each."""
    split, rates, _ = DMIL_VARIANTS[variant]
    epochs = [max(1, round(count * total_epochs / sum(split))) for count in split[:2]]
    epochs.append(max(1, total_epochs - sum(epochs)))
    return list(zip(epochs, rates))


def planted_method_config(num_modalities: int, method: str) -> I2MoEConfig:
    if method == "i2m2":
        return planted_config(num_modalities, "vanilla", i2m2_heads=True)
    if method in I2MOE_SETTINGS:
        return planted_config(num_modalities, "i2moe", **I2MOE_SETTINGS[method])
    if method in DMIL_VARIANTS:
        return planted_config(num_modalities, "dmil", dmil=DMIL_VARIANTS[method][2])
    return planted_config(num_modalities, method)


def run_planted(num_modalities: int, kind: str, method: str, seed: int) -> dict:
    train, validation, test = (planted_data(kind, num_modalities, size, 1000 * seed + offset)
                               for offset, size in enumerate(PLANTED_SIZES))
    torch.manual_seed(seed)
    model = I2MoEForClassification(planted_method_config(num_modalities, method))
    if method in DMIL_VARIANTS:
        fits = train_dmil(model, train, validation, stages=dmil_stages(PLANTED_EPOCHS, method), batch_size=BATCH, seed=seed,
                          modality_dropout=DROPOUT)
        validation_accuracy = [round(fit["accuracy"], 4) for fit in fits]
    else:
        fit = train_epochs(model, train, validation, epochs=PLANTED_EPOCHS, lr=PLANTED_LR, batch_size=BATCH, seed=seed,
                           modality_dropout=DROPOUT)
        validation_accuracy = [round(fit["accuracy"], 4)]
    return _result(model, test, validation_accuracy)


def _result(model, test: dict, validation_accuracy: list[float], fits: list[dict] = ()) -> dict:
    """The test metrics of the (best-validation) model; with `fits`, each fit's validation accuracy
    per epoch (`history`: where it plateaus) and best epoch."""
    metrics = evaluate(model, test)
    row = {"test_accuracy": round(metrics["accuracy"], 4), "validation_accuracy": validation_accuracy}
    if fits:
        row["history"] = [fit["history"] for fit in fits]
        row["best_epoch"] = [fit["best_epoch"] for fit in fits]
    for field in ("component_accuracy", "mean_weight"):
        if field in metrics:
            row[field] = {name: round(value, 3) for name, value in metrics[field].items()}
    return row


# --- AV-MNIST ---


def avmnist_config(modalities: tuple[str, ...], method: str, fusion: str = "concat", audio_pool: int = 1,
                   **overrides) -> I2MoEConfig:
    """LeNet towers of width 6, MLP heads of width 100, LRTF rank 40 / output 120 (as
    `benchmarks/avmnist_i2m2.py`'s inter models); the audio tower has one block fewer per halving
    of the spectrogram (`audio_pool`), so its last feature map keeps its size."""
    layers = {**TOWER_LAYERS, "audio": TOWER_LAYERS["audio"] - int(math.log2(audio_pool))}
    return I2MoEConfig(
        modalities=[{"name": name, "tower": I2MoELeNetConfig(base_channels=6, num_additional_layers=layers[name])}
                    for name in modalities],
        hidden_size=64, fusion=fusion, fusion_hidden_size=100, lrtf_rank=40, lrtf_output_size=120, dropout=0.0,
        num_labels=10, problem_type="single_label_classification", method=method, **overrides,
    )


def avmnist_splits(args) -> dict[str, dict[str, torch.Tensor]]:
    from i2moe.datasets_avmnist import load_avmnist

    avmnist = load_avmnist(args.data_dir, seed=0, max_train_samples=args.avmnist_train,
                           max_eval_samples=args.avmnist_eval)
    columns = ["image_pixel_values", "audio_pixel_values", "labels"]
    splits = {split: avmnist[split].select_columns(columns).with_format("torch")[:] for split in ("train", "validation", "test")}
    if args.audio_pool > 1:  # the 112x112 spectrogram average-pooled (4x less audio-tower work at 2)
        for split in splits.values():
            split["audio_pixel_values"] = torch.nn.functional.avg_pool2d(split["audio_pixel_values"], args.audio_pool)
    return splits


def _only(data: dict, modality: str) -> dict:
    """The columns of one modality (`{modality}_pixel_values` / `{modality}_tower_features`) and the labels."""
    return {key: value for key, value in data.items() if key.startswith(f"{modality}_") or key == "labels"}


@torch.no_grad()
def _log_probabilities(model, data: dict, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    inputs = {key: value for key, value in data.items() if key != "labels"}
    return torch.cat([model(**{key: value[start:start + batch_size] for key, value in inputs.items()}).logits.log_softmax(-1)
                      for start in range(0, len(data["labels"]), batch_size)])


def unimodal_rows(seed: int, args, data: dict, fit) -> dict:
    """The image-only and audio-only models of this seed, and from their test probabilities the
    `ensemble` (mean probability) and I2M2's `intra` (product of the unimodal experts: summed
    log-probabilities). The `ensemble` row, with the other three under `also`."""
    log_probabilities, rows = [], {}
    for modality in ("image", "audio"):
        torch.manual_seed(seed)
        model = I2MoEForClassification(avmnist_config((modality,), "vanilla", audio_pool=args.audio_pool))
        splits = {name: _only(split, modality) for name, split in data.items()}
        result = fit(model, splits)
        save_part(model, args, seed, modality)
        rows[modality] = _result(model, splits["test"], [round(result["accuracy"], 4)], [result])
        log_probabilities.append(_log_probabilities(model, splits["test"]))
    labels = data["test"]["labels"]

    def accuracy(scores: torch.Tensor) -> float:
        return round(float((scores.argmax(-1) == labels).float().mean()), 4)

    validation = [rows[modality]["validation_accuracy"][0] for modality in ("image", "audio")]
    rows["intra"] = {"test_accuracy": accuracy(log_probabilities[0] + log_probabilities[1]), "validation_accuracy": validation}
    ensemble = {"test_accuracy": accuracy(log_probabilities[0].exp() + log_probabilities[1].exp()),
                "validation_accuracy": validation}
    return {**ensemble, "also": rows}


def run_avmnist(method: str, seed: int, args, data: dict) -> dict:
    epochs, lr = args.avmnist_epochs, args.avmnist_lr
    start = time.time()

    def progress(epoch: int, metrics: dict) -> None:
        print(f"  {method} seed {seed} epoch {epoch + 1}: validation {metrics['accuracy']:.4f} "
              f"({time.time() - start:.0f} s)", flush=True)

    fit = lambda model, splits: train_epochs(model, splits["train"], splits["validation"], epochs=epochs, lr=lr,
                                             batch_size=args.batch_size, seed=seed, modality_dropout=0.0,
                                             on_epoch=progress)
    if method == "ensemble":
        return unimodal_rows(seed, args, data, fit)
    if method in STAGED_METHODS:
        return run_avmnist_staged(method, seed, args, data)
    torch.manual_seed(seed)
    if method in DMIL_VARIANTS:
        model = I2MoEForClassification(avmnist_config(("image", "audio"), "dmil", audio_pool=args.audio_pool,
                                                      dmil=DMIL_VARIANTS[method][2]))
        fits = train_dmil(model, data["train"], data["validation"], stages=dmil_stages(epochs, method),
                          batch_size=args.batch_size, seed=seed, modality_dropout=0.0, on_epoch=progress)
        return _result(model, data["test"], [round(f["accuracy"], 4) for f in fits], fits)
    family, fusion = method.rsplit("_", 1)
    fusion = {"lf": "concat", "lrtf": "lrtf", "transformer": "transformer"}[fusion]
    if family == "i2m2":
        config = avmnist_config(("image", "audio"), "vanilla", fusion, args.audio_pool, i2m2_heads=True)
    elif family == "i2moe_i2m2":
        config = avmnist_config(("image", "audio"), "i2moe", fusion, args.audio_pool, i2m2_heads=True, i2moe=PAPER)
    elif family in I2MOE_SETTINGS:
        config = avmnist_config(("image", "audio"), "i2moe", fusion, args.audio_pool, **I2MOE_SETTINGS[family])
    else:
        config = avmnist_config(("image", "audio"), family, fusion, args.audio_pool)
    model = I2MoEForClassification(config)
    result = fit(model, data)
    if method in PART_METHODS:
        save_part(model, args, seed, method)
    return _result(model, data["test"], [round(result["accuracy"], 4)], [result])


# --- staged initialisation: methods fine-tuned from trained parts ---

# The models other rows train, saved for the staged rows: the unimodal models (AV-MNIST `ensemble`,
# fashion `unimodal`) and the plain fusions. A staged row trains the parts it lacks (same seed, same
# fit) before fine-tuning.
PART_METHODS = ("vanilla_lf", "vanilla_lrtf", "vanilla")
# `i2m2_staged*`: the paper's recipe (METHODS.md §2: each unimodal model and the inter model trained
# separately, then their product fine-tuned jointly; separate towers). `i2moe_warm*`: I2MoE whose
# towers and every expert start from the trained fusion it wraps (issue 14's "expert
# initialisation"). `vanilla_warm*`: that fusion fine-tuned by the same schedule, the same-budget
# baseline of `i2moe_warm*`. `i2m2_product*`: the assembled product before any fine-tuning (a joint
# fine-tuning budget of 0). Fine-tuning: `--finetune_epochs` at `--finetune_lr` (default: a tenth of
# the suite's lr, as the paper's joint lr), under the suite's schedule and epoch keeping.
# `vanilla_uniwarm*` / `i2moe_uniwarm*`: the fusion / I2MoE whose encoders (tower, projection, null
# tokens) start as the separately trained unimodal models' and everything after them fresh (the start
# DMIL's stage 1 gives its level 2): what separately trained towers are worth to a fusion and to
# I2MoE, each beside the other at the same budget. Their fresh heads train at the suite's lr.
UNIWARM_METHODS = ("vanilla_uniwarm_lf", "i2moe_uniwarm_lf", "vanilla_uniwarm", "i2moe_uniwarm")
STAGED_METHODS = ("i2m2_staged_lf", "i2m2_staged_lrtf", "i2m2_product_lf", "i2m2_product_lrtf", "i2moe_warm_lf",
                  "vanilla_warm_lf", "i2m2_staged", "i2m2_product", "i2moe_warm", "vanilla_warm", *UNIWARM_METHODS)


def run_avmnist_staged(method: str, seed: int, args, data: dict) -> dict:
    fusion = method.rsplit("_", 1)[1]

    def part(name: str) -> tuple[I2MoEForClassification, float]:
        unimodal = name in ("image", "audio")
        train = lambda: run_avmnist("ensemble" if unimodal else name, seed, args, data)
        return load_part(args, seed, name, train, _only(data["test"], name) if unimodal else data["test"])

    return finetune_staged(method, seed, args, data, part, f"vanilla_{fusion}", ("image", "audio"), args.avmnist_lr,
                           batch_size=args.batch_size, modality_dropout=0.0)


def part_dir(args, seed: int, name: str) -> Path:
    return Path(args.parts_dir) / args.parts_key / f"seed{seed}" / name


def save_part(model, args, seed: int, name: str) -> None:
    model.save_pretrained(part_dir(args, seed, name))


def load_part(args, seed: int, name: str, train, test: dict) -> tuple[I2MoEForClassification, float]:
    """The saved part `name` of this suite, budget and seed, made by `train()` first when missing
    (the row that trains it, so it is the model behind that row), and its test accuracy on `test`."""
    if not part_dir(args, seed, name).exists():
        train()
    model = I2MoEForClassification.from_pretrained(part_dir(args, seed, name))
    accuracy = round(evaluate(model, test)["accuracy"], 4)
    print(f"  part {name} seed {seed}: test {accuracy:.4f}", flush=True)
    return model, accuracy


def warm_i2moe(fusion_model) -> I2MoEForClassification:
    """I2MoE with the trained fusion's towers, projections and null tokens, and its fusion backbone in
    each of the K expert stacks (the reweighting model fresh): at the start every expert predicts
    what the fusion predicts, so the mixture does too, whatever its weights."""
    config = I2MoEConfig(**{**fusion_model.config.to_dict(), "method": "i2moe", "i2moe": PAPER})
    model = I2MoEForClassification(config)
    state = {key.replace("interaction.backbone.", "interaction.experts."): value
             for key, value in fusion_model.state_dict().items()}
    for key, value in model.interaction.experts.state_dict().items():
        state[f"interaction.experts.{key}"] = state[f"interaction.experts.{key}"].expand_as(value).clone()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or not all(key.startswith("interaction.reweighting.") for key in missing):
        raise ValueError(f"warm_i2moe: the fusion does not fit the experts: missing {missing}, unexpected {unexpected}")
    return model


def unimodal_warm(fusion_config: I2MoEConfig, method: str, unimodal: dict[str, I2MoEForClassification]):
    """`method` on the fusion's config, each modality's encoder (tower, projection, null tokens) loaded
    from its trained one-modality model in `unimodal`, the fusion / experts / reweighting model fresh."""
    paper = {"i2moe": PAPER} if method == "i2moe" else {}
    model = I2MoEForClassification(I2MoEConfig(**{**fusion_config.to_dict(), "method": method, **paper}))
    state = {key: value for name, part in unimodal.items() for key, value in part.state_dict().items()
             if key.startswith(f"encoders.{name}.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(key.startswith("encoders.") for key in missing):
        raise ValueError(f"unimodal_warm: the unimodal encoders do not fit: missing {missing}, unexpected {unexpected}")
    return model


def staged_start(method: str, inter_name: str, unimodal_names: tuple[str, ...], part) -> tuple:
    """The model a staged row fine-tunes, built from the `part(name)` models, and the parts' test accuracies
    (a `uniwarm` row reads only the fusion part's config, none of its weights)."""
    with_unimodal = method.startswith("i2m2") or method in UNIWARM_METHODS
    parts = {name: part(name) for name in ((*unimodal_names, inter_name) if with_unimodal else (inter_name,))}
    inter = parts[inter_name][0]
    if method in UNIWARM_METHODS:
        model = unimodal_warm(inter.config, method.split("_")[0], {name: parts[name][0] for name in unimodal_names})
        del parts[inter_name]
    elif method.startswith("i2m2"):
        model = I2MoEForClassification.from_i2m2_parts(unimodal={name: parts[name][0] for name in unimodal_names},
                                                       inter=inter)
    else:
        model = warm_i2moe(inter) if method.startswith("i2moe") else inter
    return model, {name: accuracy for name, (_, accuracy) in parts.items()}


def finetune_staged(method: str, seed: int, args, splits: dict, part, inter_name: str, unimodal_names: tuple[str, ...],
                    suite_lr: float, **fit) -> dict:
    """A staged row: its start (`staged_start`) fine-tuned on `splits` (`fit`: the suite's batch size,
    modality dropout, weight decay, schedule); `i2m2_product*` rows are the start itself, evaluated."""
    torch.manual_seed(seed)  # the fresh parts of the start (reweighting model, uniwarm heads)
    model, parts = staged_start(method, inter_name, unimodal_names, part)
    if method.startswith("i2m2_product"):
        validation = round(evaluate(model, splits["validation"])["accuracy"], 4)
        return {**_result(model, splits["test"], [validation]), "parts_test_accuracy": parts}
    settings = {"epochs": args.finetune_epochs,
                "lr": args.finetune_lr or (suite_lr if method in UNIWARM_METHODS else suite_lr / 10)}
    torch.manual_seed(seed)
    result = train_epochs(model, splits["train"], splits["validation"], **settings, seed=seed + 100, **fit)
    row = _result(model, splits["test"], [round(result["accuracy"], 4)], [result])
    return {**row, "parts_test_accuracy": parts, "finetune": settings}


# --- fashion products: frozen pretrained towers, cached features ---

FASHION_METHODS = ("unimodal", "vanilla", "i2moe", "i2m2", "dmil", "vanilla_warm", "i2moe_warm", "i2m2_staged",
                   "i2m2_product")
FASHION_EPOCHS, FASHION_LR, FASHION_BATCH = 20, 2e-3, 128
# The tower pass behind the cached features, in the budget: since issue 17 the towers run in calls of
# 16 rows on CPU, EfficientNet-Lite0 on channels-last input; the features moved by float rounding and
# the rows trained on them moved by a few test products, so rows of the two passes are not mixed.
FASHION_FEATURES = "towercalls16"
# `--fashion_recipe`: how every fashion row trains. `linear-best`: linear decay, the best validation
# epoch kept (as the AV-MNIST rows). `demo`: the demo's Trainer recipe (examples/demo.sh: cosine
# decay after 5% warm-up, the last epoch kept; DMIL still starts each stage from the previous
# stage's best epoch, as the method prescribes).
FASHION_RECIPES = {"linear-best": {}, "demo": {"schedule": "cosine", "warmup_ratio": 0.05, "keep_best": False}}


def fashion_splits(args) -> tuple[dict, dict]:
    """The demo's data and towers (`examples/run_classification.py`: EfficientNet-Lite0 at 128x128 and
    all-MiniLM-L6-v2, frozen), their outputs cached once (`i2moe.caching`, shared with the demo) ->
    per split `{image,text}_tower_features` and `labels` tensors, and the towers' configs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import run_classification

    from i2moe import I2MoEProcessor
    from i2moe.caching import cache_tower_features, feature_column

    model_args = run_classification.ModelArguments(method="vanilla", hidden_size=256, fusion="concat", image_size=128)
    task = run_classification.build_fashion(run_classification.DataArguments(target=args.fashion_target), model_args)
    model = run_classification.build_model(task, model_args, task.dataset["train"]["labels"])
    processor = I2MoEProcessor(task.processors, text_max_length=32)
    splits = {}
    for split in ("train", "validation", "test"):
        cached = cache_tower_features(model, processor, task.dataset[split], batch_size=256)
        splits[split] = {feature_column(name): torch.as_tensor(np.stack(cached[feature_column(name)]))
                         for name in ("image", "text")}
        splits[split]["labels"] = torch.as_tensor(cached["labels"])
    towers = {name: tower.config for name, tower in task.towers.items()}
    return splits, {"towers": towers, "num_labels": len(task.label_names)}


def fashion_config(spec: dict, modalities: tuple[str, ...], method: str, **overrides) -> I2MoEConfig:
    """The demo's model (frozen towers, mean pooling, width 256, concat fusion, modality dropout 0.3
    in training) for `modalities`; the towers are never run (their cached outputs are the inputs)."""
    return I2MoEConfig(
        modalities=[{"name": name, "tower": spec["towers"][name], "freeze": True, "pooling": "mean"} for name in modalities],
        hidden_size=256, fusion="concat", num_labels=spec["num_labels"], method=method,
        problem_type="single_label_classification", modality_dropout=0.3 if len(modalities) > 1 else 0.0, **overrides,
    )


def run_fashion(method: str, seed: int, args, data: tuple[dict, dict]) -> dict:
    splits, spec = data
    recipe = FASHION_RECIPES[args.fashion_recipe]
    fit = lambda model, parts, dropout: train_epochs(model, parts["train"], parts["validation"], epochs=FASHION_EPOCHS,
                                                     lr=FASHION_LR, batch_size=FASHION_BATCH, seed=seed,
                                                     modality_dropout=dropout, weight_decay=0.01, **recipe)
    both = ("image", "text")
    if method == "unimodal":  # image-only and text-only, and their mean-probability ensemble
        rows, log_probabilities = {}, []
        for name in both:
            torch.manual_seed(seed)
            model = I2MoEForClassification(fashion_config(spec, (name,), "vanilla"))
            parts = {split: _only(columns, name) for split, columns in splits.items()}
            result = fit(model, parts, 0.0)
            save_part(model, args, seed, name)
            rows[name] = _result(model, parts["test"], [round(result["accuracy"], 4)], [result])
            log_probabilities.append(_log_probabilities(model, parts["test"]))
        predictions = (log_probabilities[0].exp() + log_probabilities[1].exp()).argmax(-1)
        accuracy = round(float((predictions == splits["test"]["labels"]).float().mean()), 4)
        return {"test_accuracy": accuracy, "validation_accuracy": [rows[name]["validation_accuracy"][0] for name in both],
                "also": rows}
    if method in STAGED_METHODS:
        return run_fashion_staged(method, seed, args, data)
    torch.manual_seed(seed)
    if method in DMIL_VARIANTS:
        model = I2MoEForClassification(fashion_config(spec, both, "dmil", dmil=DMIL_VARIANTS[method][2]))
        fits = train_dmil(model, splits["train"], splits["validation"], stages=dmil_stages(FASHION_EPOCHS, method),
                          batch_size=FASHION_BATCH, seed=seed, modality_dropout=0.3, **recipe)
        return _result(model, splits["test"], [round(f["accuracy"], 4) for f in fits], fits)
    if method == "i2m2":
        config = fashion_config(spec, both, "vanilla", i2m2_heads=True)
    else:
        config = fashion_config(spec, both, "i2moe" if method in I2MOE_SETTINGS else method,
                                **I2MOE_SETTINGS.get(method, {}))
    model = I2MoEForClassification(config)
    result = fit(model, splits, 0.3)
    if method in PART_METHODS:
        save_part(model, args, seed, method)
    return _result(model, splits["test"], [round(result["accuracy"], 4)], [result])


def run_fashion_staged(method: str, seed: int, args, data: tuple[dict, dict]) -> dict:
    splits = data[0]

    def part(name: str) -> tuple[I2MoEForClassification, float]:
        unimodal = name in ("image", "text")
        train = lambda: run_fashion("unimodal" if unimodal else name, seed, args, data)
        return load_part(args, seed, name, train, _only(splits["test"], name) if unimodal else splits["test"])

    return finetune_staged(method, seed, args, splits, part, "vanilla", ("image", "text"), FASHION_LR,
                           batch_size=FASHION_BATCH, modality_dropout=0.3, weight_decay=0.01,
                           **FASHION_RECIPES[args.fashion_recipe])


# --- driver ---


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["planted2", "planted3", "avmnist", "fashion"])
    parser.add_argument("--fashion_target", default="articleType", help="fashion: the column to predict")
    parser.add_argument("--fashion_recipe", default="linear-best", choices=sorted(FASHION_RECIPES),
                        help="fashion: how every row trains (see FASHION_RECIPES)")
    parser.add_argument("--kinds", nargs="+", default=None, help="planted kinds (default: all of the suite)")
    parser.add_argument("--methods", nargs="+", default=None, help="methods (default: all of the suite)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--avmnist_train", type=int, default=3000)
    parser.add_argument("--avmnist_eval", type=int, default=1000, help="validation and test rows")
    parser.add_argument("--avmnist_epochs", type=int, default=4)
    parser.add_argument("--avmnist_lr", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=40, help="AV-MNIST batch size")
    parser.add_argument("--audio_pool", type=int, default=1, choices=[1, 2, 4],
                        help="average-pool the AV-MNIST spectrogram by this factor (2: 56x56, one audio block fewer)")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--parts_dir", default=str(Path.home() / ".cache" / "i2moe" / "methods_suite_parts"),
                        help="where the trained parts of the staged rows are saved (per suite, budget and seed)")
    parser.add_argument("--finetune_epochs", type=int, default=5, help="staged rows: joint fine-tuning epochs")
    parser.add_argument("--finetune_lr", type=float, default=None,
                        help="staged rows: joint fine-tuning lr (default: a tenth of the suite's lr; uniwarm rows: the suite's)")
    parser.add_argument("--summarise", action="store_true", help="only print the tables")
    parser.add_argument("--markdown", action="store_true", help="only print the tables as markdown (for the docs)")
    parser.add_argument("--write_docs", metavar="MARKDOWN", default=None,
                        help="with --acceptance: write the --markdown tables and the acceptance table between the "
                             "RESULTS_TABLES / ACCEPTANCE_TABLE markers of this file (docs/results.md)")
    parser.add_argument("--acceptance", nargs="+", metavar="SUITE=BUDGET",
                        help="only print issue 14's per-seed acceptance table for these budgets (a suite named again starts a "
                             "second table), e.g. "
                             "avmnist=10000rows-15ep-adamw0.001-bs64-audiopool2 fashion=all-rows-20ep-adamw0.002-bs128-towercalls16")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.markdown:
        markdown_tables()
        return
    if args.acceptance:
        budgets = acceptance_budgets(args.acceptance)
        if args.write_docs:
            write_docs(Path(args.write_docs), budgets)
            return
        for budget in budgets:
            acceptance_table(budget)
        return
    if not args.summarise:
        torch.set_num_threads(1)
        run_suite(args)
    summarise()


def suite_budget(args) -> tuple[str, str]:
    """The suite's budget (a key of its rows) and where its trained parts are saved under `--parts_dir`."""
    if args.suite == "avmnist":
        budget = f"{args.avmnist_train}rows-{args.avmnist_epochs}ep-adamw{args.avmnist_lr:g}"
        budget += f"-bs{args.batch_size}" + (f"-audiopool{args.audio_pool}" if args.audio_pool > 1 else "")
        return budget, f"avmnist/{budget}"
    if args.suite == "fashion":
        budget = f"all-rows-{FASHION_EPOCHS}ep-adamw{FASHION_LR:g}-bs{FASHION_BATCH}-{FASHION_FEATURES}"
        budget += "" if args.fashion_recipe == "linear-best" else f"-{args.fashion_recipe}"
        return budget, f"fashion/{args.fashion_target}/{budget}"
    budget = f"{PLANTED_SIZES[0]}rows-{PLANTED_EPOCHS}ep"
    return budget, f"{args.suite}/{budget}"


def run_suite(args) -> None:
    budget, args.parts_key = suite_budget(args)
    data = None
    if args.suite == "avmnist":
        jobs = [("avmnist", method, seed) for seed in args.seeds for method in (args.methods or AVMNIST_METHODS)]
    elif args.suite == "fashion":
        jobs = [(args.fashion_target, method, seed) for seed in args.seeds for method in (args.methods or FASHION_METHODS)]
    else:
        num_modalities = int(args.suite[-1])
        kinds = args.kinds or planted_kinds(num_modalities)
        jobs = [(kind, method, seed) for seed in args.seeds for kind in kinds for method in (args.methods or PLANTED_METHODS)]
    for kind, method, seed in jobs:
        # Read again before each row: another process may be filling the same file.
        if (args.suite, kind, method, seed, budget) in finished_keys(RESULTS, KEY_FIELDS):
            continue
        start = time.time()
        if args.suite == "avmnist":
            data = data or avmnist_splits(args)
            result = run_avmnist(method, seed, args, data)
        elif args.suite == "fashion":
            data = data or fashion_splits(args)
            result = run_fashion(method, seed, args, data)
        else:
            result = run_planted(num_modalities, kind, method, seed)
        seconds = round(time.time() - start, 1)
        for name, fields in [(method, result), *result.pop("also", {}).items()]:
            row = {"suite": args.suite, "kind": kind, "method": name, "seed": seed, "budget": budget, **fields,
                   "seconds": seconds}
            append_row(RESULTS, row)
            print({key: row[key] for key in (*KEY_FIELDS, "test_accuracy", "seconds")}, flush=True)


def summarise() -> None:
    """Per suite and budget: the median test accuracy of each (kind, method) over seeds, and the
    median per-seed gap to the baseline of the same seed (`vanilla` for the planted suites,
    `vanilla_lf` / `vanilla_lrtf` for AV-MNIST)."""
    rows = read_rows(RESULTS)
    groups = sorted({(row["suite"], row["budget"]) for row in rows})
    for suite, budget in groups:
        print(f"\n{suite} ({budget}): median test accuracy over seeds [per-seed values]; gap = median per-seed difference to the baseline")
        subset = [row for row in rows if row["suite"] == suite and row["budget"] == budget]
        for kind in dict.fromkeys(row["kind"] for row in subset):
            for method in dict.fromkeys(row["method"] for row in subset if row["kind"] == kind):
                group = [row for row in subset if row["kind"] == kind and row["method"] == method]
                baseline_method = "vanilla" if suite != "avmnist" else ("vanilla_lrtf" if method.endswith("lrtf") else "vanilla_lf")
                baseline = {row["seed"]: row["test_accuracy"] for row in subset
                            if row["kind"] == kind and row["method"] == baseline_method}
                gaps = [row["test_accuracy"] - baseline[row["seed"]] for row in group if row["seed"] in baseline]
                gap = f"{100 * median(gaps):+.2f}" if gaps else "  n/a"
                values = [round(100 * row["test_accuracy"], 2) for row in group]
                print(f"  {kind:14s} {method:13s} {100 * median([row['test_accuracy'] for row in group]):6.2f} "
                      f"gap {gap}  {values}")


# Issue 14's acceptance, per seed: (suite, method, the rows whose best it must reach).
ACCEPTANCE = [
    ("avmnist", "i2moe_lf", ("vanilla_lf",)), ("avmnist", "i2moe_lrtf", ("vanilla_lrtf",)),
    ("avmnist", "i2moe_transformer", ("vanilla_transformer",)), ("avmnist", "dmil", ("vanilla_lf", "ensemble")),
    ("avmnist", "i2m2_lf", ("intra", "vanilla_lf")), ("avmnist", "i2m2_lrtf", ("intra", "vanilla_lrtf")),
    ("avmnist", "i2moe_sub25_lf", ("i2moe_lf",)), ("avmnist", "i2moe_xl_lf", ("vanilla_lf",)),
    ("avmnist", "i2moe_lambda001_lf", ("vanilla_lf",)), ("avmnist", "i2moe_lambda0_lf", ("vanilla_lf",)),
    ("avmnist", "i2moe_balance_lf", ("vanilla_lf",)), ("avmnist", "i2moe_eqwarm_lf", ("vanilla_lf",)),
    ("avmnist", "i2m2_staged_lf", ("intra", "vanilla_lf")), ("avmnist", "i2m2_staged_lrtf", ("intra", "vanilla_lrtf")),
    ("avmnist", "i2m2_product_lf", ("intra", "vanilla_lf")), ("avmnist", "i2m2_product_lrtf", ("intra", "vanilla_lrtf")),
    ("avmnist", "i2moe_warm_lf", ("vanilla_lf", "vanilla_warm_lf")), ("avmnist", "dmil_late", ("vanilla_lf", "ensemble")),
    ("avmnist", "dmil_fused", ("vanilla_lf", "ensemble")), ("avmnist", "i2moe_normuni_lf", ("vanilla_lf",)),
    ("avmnist", "i2moe_normuni_lrtf", ("vanilla_lrtf",)), ("avmnist", "i2moe_normuni_transformer", ("vanilla_transformer",)),
    ("avmnist", "vanilla_uniwarm_lf", ("vanilla_lf",)), ("avmnist", "i2moe_uniwarm_lf", ("vanilla_lf", "vanilla_uniwarm_lf")),
    ("avmnist", "i2moe_guided_lf", ("vanilla_lf",)), ("avmnist", "i2moe_guided_lrtf", ("vanilla_lrtf",)),
    ("avmnist", "i2moe_guided_transformer", ("vanilla_transformer",)), ("avmnist", "i2moe_guided1_lf", ("vanilla_lf",)),
    ("avmnist", "i2moe_xl_lrtf", ("vanilla_lrtf",)),
    *(("fashion", method, ("image", "text")) for method in ("vanilla", "i2moe", "i2m2", "dmil", "dmil_fast2", "dmil_wide",
                                                            "dmil_lowkl", "dmil_fused", "dmil_mean", "i2moe_warm", "i2m2_staged",
                                                            "i2m2_product", "i2moe_normuni", "i2moe_guided",
                                                            "i2moe_guided1")),
]


def acceptance_budgets(items: list[str]) -> list[dict[str, str]]:
    """`SUITE=BUDGET` items -> one {suite: budget} per acceptance table; a suite named again starts the next."""
    budgets = [{}]
    for suite, budget in (item.split("=", 1) for item in items):
        budgets += [{}] if suite in budgets[-1] else []
        budgets[-1][suite] = budget
    return budgets


def acceptance_table(budgets: dict[str, str]) -> None:
    """Per seed, each method of `ACCEPTANCE` against the best of its baselines (markdown): met when
    it is at least as accurate. `budgets`: the budget per suite."""
    rows = read_rows(RESULTS)
    accuracy = {(row["suite"], row["method"], row["seed"]): row["test_accuracy"] for row in rows
                if row["budget"] == budgets.get(row["suite"])}
    print(f"budgets: {', '.join(f'{suite} {budget}' for suite, budget in budgets.items())}\n")
    print("| suite | method | must reach | median: method vs best baseline | per seed: gap (points) | met on |")
    print("|---|---|---|---|---|---|")
    for suite, method, baselines in ACCEPTANCE:
        seeds = sorted(seed for (row_suite, row_method, seed) in accuracy if (row_suite, row_method) == (suite, method)
                       and all((suite, baseline, seed) in accuracy for baseline in baselines))
        if not seeds:
            continue
        values = [accuracy[(suite, method, seed)] for seed in seeds]
        best = [max(accuracy[(suite, baseline, seed)] for baseline in baselines) for seed in seeds]
        gaps = "; ".join(f"{seed}: {100 * (value - base):+.2f}" for seed, value, base in zip(seeds, values, best))
        met = sum(value >= base for value, base in zip(values, best))
        print(f"| {suite} | {method} | max({', '.join(baselines)}) | {100 * median(values):.2f} vs {100 * median(best):.2f} "
              f"| {gaps} | {met} of {len(seeds)} |")


def write_docs(path: Path, budgets: list[dict[str, str]]) -> None:
    """The generated blocks of `path`: `--markdown`'s tables and one acceptance table per budget."""
    def printed(function, *arguments) -> str:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            function(*arguments)
        return buffer.getvalue().strip("\n")

    text = path.read_text()
    blocks = {"RESULTS_TABLES": printed(markdown_tables),
              "ACCEPTANCE_TABLE": "\n\n".join(printed(acceptance_table, budget) for budget in budgets)}
    for marker, block in blocks.items():
        start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{block}\n{end}{rest.split(end, 1)[1]}"
    path.write_text(text)


def markdown_tables() -> None:
    """One markdown table per (suite, budget): kinds as rows, methods as columns, each cell the median
    test accuracy (%) over seeds and the number of seeds; a suite of one kind (AV-MNIST, fashion)
    has methods as rows with every seed's value."""
    rows = read_rows(RESULTS)
    for suite, budget in sorted({(row["suite"], row["budget"]) for row in rows}):
        subset = [row for row in rows if row["suite"] == suite and row["budget"] == budget]
        methods = list(dict.fromkeys(row["method"] for row in subset))
        if len({row["kind"] for row in subset}) == 1:
            seeds = sorted({row["seed"] for row in subset})
            print(f"\n{suite} ({subset[0]['kind']}), {budget}: test accuracy (%)\n")
            print("| method | median | " + " | ".join(f"seed {seed}" for seed in seeds) + " |")
            print("|---" * (len(seeds) + 2) + "|")
            for method in methods:
                by_seed = {row["seed"]: row["test_accuracy"] for row in subset if row["method"] == method}
                cells = [f"{100 * by_seed[seed]:.2f}" if seed in by_seed else "—" for seed in seeds]
                print(f"| {method} | {100 * median(list(by_seed.values())):.2f} | " + " | ".join(cells) + " |")
            continue
        print(f"\n{suite}, {budget}: median test accuracy (%) over seeds (number of seeds)\n")
        print("| kind | " + " | ".join(methods) + " |")
        print("|---" * (len(methods) + 1) + "|")
        for kind in dict.fromkeys(row["kind"] for row in subset):
            cells = []
            for method in methods:
                values = [row["test_accuracy"] for row in subset if row["kind"] == kind and row["method"] == method]
                cells.append(f"{100 * median(values):.2f} ({len(values)})" if values else "—")
            print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
