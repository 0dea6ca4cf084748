"""Train every interaction method, with and without the I2M2 heads, for a few steps with
`Trainer`, alone or under a launcher.

    python tests/distributed/train_methods.py OUT                          # one process, batch 8
    torchrun --nproc_per_node 2 tests/distributed/train_methods.py OUT     # two CPU processes (gloo), 4 each
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no tests/distributed/train_methods.py OUT

Either way the global batch is 8 rows in a fixed (sequential) order, so one process and two see
the same batches. The rows are laid out so that, under two processes, one process's whole batch
lacks a modality while the other's has it (rows 0-3 lack m1, rows 12-15 lack m0), and one global
batch lacks m2 everywhere (rows 16-23). DDP runs with `find_unused_parameters=False`: it fails if
a skipped tower leaves any parameter without a gradient.

The variants (`variants()`): every method of `INTERACTIONS`, each with and without the I2M2
unimodal heads (shared towers, and once with separate unimodal towers), DMIL in each of its three
stages as its schedule sets them up (`apply_dmil_stage`, which freezes what a stage does not train),
and I2MoE with its noise-free `null` perturbation and no interaction loss. Every row carries a
`sample_ids` entry, so the noise of the stochastic methods is the same on one process and two.

Each process writes, per variant, `OUT/{variant}.{tag}.safetensors` (the trained weights) and
`OUT/{variant}.{tag}.json` (training loss, the modalities its batches lacked entirely, whether the
variant samples noise in training), with tag `single` or `rank{r}`. `tests/test_distributed.py`
compares them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
from i2moe.dmil_training import apply_dmil_stage
from i2moe.registry_i2moe import INTERACTIONS


FEATURE_SIZES = (8, 4, 6)
GLOBAL_BATCH = 8
NUM_ROWS = 32


def variants() -> dict[str, dict]:
    """Variant name -> `I2MoEConfig` overrides (plus `dmil_stage`, applied with `apply_dmil_stage`)."""
    found = {}
    for method in INTERACTIONS.names():
        stages = (1, 2, 3) if method == "dmil" else (None,)
        for stage in stages:
            name = method if stage is None else f"{method}-stage{stage}"
            settings = {"method": method} if stage is None else {"method": method, "dmil_stage": stage}
            found[name] = settings
            found[f"{name}+i2m2"] = {**settings, "i2m2_heads": True}
    found["vanilla+i2m2-separate"] = {"method": "vanilla", "i2m2_heads": True, "i2m2_separate_towers": True}
    # I2MoE without noise and without its interaction loss: the plainest I2MoE run.
    found["i2moe-null-lambda0"] = {"method": "i2moe", "i2moe_perturbation": "null", "i2moe_lambda_int": 0.0}
    return found


def build_model(variant: str) -> I2MoEForClassification:
    settings = dict(variants()[variant])
    stage = settings.pop("dmil_stage", None)
    model = I2MoEForClassification(build_config(**settings))
    if stage is not None:
        apply_dmil_stage(model, stage)
    return model


def build_config(method: str, **overrides) -> I2MoEConfig:
    """Three feature modalities, no dropout anywhere (the runs must be comparable)."""
    modalities = [
        {"name": f"m{index}", "tower": I2MoEFeaturesConfig(input_size=size, hidden_size=16, num_hidden_layers=1,
                                                           hidden_dropout_prob=0.0)}
        for index, size in enumerate(FEATURE_SIZES)
    ]
    return I2MoEConfig(modalities=modalities, method=method, hidden_size=16, fusion="transformer", fusion_num_layers=1,
                       fusion_num_heads=2, fusion_hidden_size=16, num_labels=3, dropout=0.0,
                       i2moe_reweight_dropout=0.0, i2moe_reweight_hidden_size=16, dmil_latent_size=8, **overrides)


def build_dataset() -> Dataset:
    generator = torch.Generator().manual_seed(0)
    features = {f"m{index}_features": torch.randn(NUM_ROWS, size, generator=generator)
                for index, size in enumerate(FEATURE_SIZES)}
    mask = torch.ones(NUM_ROWS, len(FEATURE_SIZES), dtype=torch.long)
    mask[0:4, 1] = 0  # rank 0's first batch lacks m1; rank 1's has it
    mask[12:16, 0] = 0  # rank 1's second batch lacks m0; rank 0's has it
    mask[16:24, 2] = 0  # the whole third global batch lacks m2
    mask[24:32] = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]]).repeat(2, 1)  # mixed rows
    labels = features["m0_features"][:, :3].argmax(1)
    columns = {key: value.numpy() for key, value in features.items()}
    # `sample_ids`: the methods' training noise is drawn per sample (`CounterNoise`), so it does not
    # depend on which process a row lands on.
    return Dataset.from_dict({**columns, "modality_mask": mask.numpy(), "labels": labels.numpy(),
                              "sample_ids": torch.arange(NUM_ROWS).numpy()}).with_format("torch")


def samples_noise_in_training(model: I2MoEForClassification, dataset: Dataset) -> bool:
    """Whether a training-mode forward depends on the RNG (I2MoE noise, DMIL's VIB sampling):
    such a method cannot match across process counts, whose RNG streams differ."""
    batch = dataset[:GLOBAL_BATCH]
    losses = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            losses.append(model.train()(**batch).loss)
    return not torch.equal(*losses)


def train(variant: str, output_dir: Path, world_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(variant)
    dataset = build_dataset()
    stochastic = samples_noise_in_training(model, dataset)
    absent = []  # per step: the modalities missing from this process's whole batch

    def record_absent(module, args, kwargs):
        present = kwargs["modality_mask"].bool().any(0)
        absent.append([name for name, here in zip(module.config.modality_names, present.tolist()) if not here])

    model.register_forward_pre_hook(record_absent, with_kwargs=True)
    args = TrainingArguments(
        output_dir=str(output_dir / "trainer" / variant), per_device_train_batch_size=GLOBAL_BATCH // world_size,
        num_train_epochs=2, learning_rate=0.1, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
        train_sampling_strategy="sequential", use_cpu=True, ddp_backend="gloo" if world_size > 1 else None,
        ddp_find_unused_parameters=False, remove_unused_columns=False, save_strategy="no", report_to=[],
        logging_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    result = trainer.train()
    rank = int(os.environ.get("RANK", 0))
    tag = f"rank{rank}" if world_size > 1 else "single"
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(output_dir / f"{variant}.{tag}.safetensors"))
    report = {"training_loss": result.training_loss, "absent": absent, "stochastic": stochastic,
              "world_size": trainer.args.world_size}
    (output_dir / f"{variant}.{tag}.json").write_text(json.dumps(report))


def train_fsdp_root_unit(output_dir: Path, world_size: int) -> None:
    """The vanilla model under FSDP2 (`fully_shard`) as one unit, the way docs/distributed.md
    advises (towers not wrapped on their own), with the same batches; a plain SGD loop, since
    `Trainer` + FSDP needs a GPU. Alone (one process) the same loop runs unsharded. Writes
    `OUT/fsdp.{tag}.safetensors` (full weights) and `.json` (losses)."""
    torch.manual_seed(0)
    model = build_model("vanilla").train()
    if world_size > 1:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dataset = build_dataset()
    rank, per_process = int(os.environ.get("RANK", 0)), GLOBAL_BATCH // world_size
    losses = []
    for step in range(2 * NUM_ROWS // GLOBAL_BATCH):  # two epochs, as with Trainer
        start = (step * GLOBAL_BATCH) % NUM_ROWS + rank * per_process
        loss = model(**dataset[start:start + per_process]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    # `full_tensor` gathers a sharded parameter (a collective: every process calls it).
    state = {name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().contiguous()
             for name, value in model.state_dict().items()}
    tag = f"rank{rank}" if world_size > 1 else "single"
    save_file(state, str(output_dir / f"fsdp.{tag}.safetensors"))
    (output_dir / f"fsdp.{tag}.json").write_text(json.dumps({"losses": losses, "world_size": world_size}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--variants", nargs="*", default=list(variants()))
    parser.add_argument("--fsdp", action="store_true", help="also train the vanilla model under FSDP2 (one unit)")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    for variant in args.variants:
        train(variant, args.output_dir, world_size)
    if args.fsdp:
        train_fsdp_root_unit(args.output_dir, world_size)
    # Tear the process group down before the interpreter does: left to exit, gloo's threads can
    # abort a rank after its work is written ("terminate called without an active exception").
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
