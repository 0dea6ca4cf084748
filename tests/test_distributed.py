"""Real two-process CPU training (gloo) of every interaction method, launched the way users launch it.

`tests/distributed/train_methods.py` trains each method in `INTERACTIONS` (with and without the
I2M2 heads; DMIL in each stage) with `Trainer` under
`torchrun --nproc_per_node 2`, with DDP's `find_unused_parameters=False` and batches in which one
process's rows all lack a modality, then once in this process with the same global batches. The
runs must agree: the two replicas hold identical weights, and the two-process weights equal the
one-process weights within float tolerance, for every method: the methods that sample noise in
training draw it per sample (`sample_ids`, `noise_i2moe.CounterNoise`), and I2MoE's interaction
loss normalises by the global pair count. The same
launch also trains the vanilla model under FSDP2 with the whole model as one unit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file



SCRIPT = Path(__file__).parent / "distributed" / "train_methods.py"
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SCRIPT.parent))
try:
    import train_methods
finally:
    sys.path.remove(str(SCRIPT.parent))
VARIANTS = list(train_methods.variants())
# Variants that draw random numbers in training (VIB samples, perturbation noise): per sample, so they
# compare across process counts like the others.
# DMIL stage 2 on three modalities draws none: level 1 is frozen in eval mode, the synergy reads the
# means of N_m and there is no level 2 (its VIBs) beyond two modalities.
STOCHASTIC = {variant for variant in VARIANTS if variant.startswith(("dmil", "i2moe"))
              and variant != "i2moe-null-lambda0" and not variant.startswith("dmil-stage2")}


# A rank of a CPU (gloo) launch can abort in the C++ runtime after its work is done: 2 of 11 full-suite
# runs under `pytest -n 2` (the launch alone: 0 of 10). Only that abort is retried, once.
TEARDOWN_ABORT = "terminate called without an active exception"


def launch(command: list[str], output_dir: Path, extra_env: dict | None = None, script_args=()) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(extra_env or {}))
    for attempt in range(2):
        result = subprocess.run([*command, str(SCRIPT), str(output_dir), *script_args], capture_output=True, text=True,
                                env=env, timeout=240)
        if result.returncode == 0 or TEARDOWN_ABORT not in result.stderr:
            break
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_run(output_dir: Path, method: str, tag: str) -> tuple[dict, dict]:
    return load_file(output_dir / f"{method}.{tag}.safetensors"), json.loads((output_dir / f"{method}.{tag}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One torchrun launch trains every method in sequence (the launch costs more than the training);
    then the one-process reference, in this process."""
    output_dir = tmp_path_factory.mktemp("distributed")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    launch([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port())], output_dir, script_args=["--fsdp"])
    threads = torch.get_num_threads()
    try:
        train_methods.main([str(output_dir), "--fsdp"])
    finally:
        torch.set_num_threads(threads)
    return output_dir


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_processes_train_with_a_modality_missing_from_one_process_batch(runs, variant):
    rank0, report0 = read_run(runs, variant, "rank0")
    rank1, report1 = read_run(runs, variant, "rank1")
    assert report0["world_size"] == report1["world_size"] == 2
    # The scenario happened: in some step one process's whole batch lacked a modality the other had.
    assert any(set(a) != set(b) for a, b in zip(report0["absent"], report1["absent"]))
    assert ["m2"] in report0["absent"] and ["m2"] in report1["absent"]  # and a step where both lacked one
    for name, tensor in rank0.items():
        torch.testing.assert_close(rank1[name], tensor, rtol=0, atol=0, msg=f"replicas differ at {name}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_process_weights_match_one_process(runs, variant):
    single, report = read_run(runs, variant, "single")
    rank0, _ = read_run(runs, variant, "rank0")
    assert report["stochastic"] == (variant in STOCHASTIC), f"{variant}: stochastic={report['stochastic']}"
    torch.manual_seed(0)
    model = train_methods.build_model(variant)
    initial, trainable = model.state_dict(), [name for name, p in model.named_parameters() if p.requires_grad]
    moved = [name for name in trainable if not torch.equal(single[name], initial[name])]
    assert len(moved) > len(trainable) // 2, "training barely changed the weights; the comparison would be vacuous"
    for name, tensor in single.items():
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-4, atol=1e-5, msg=f"1 vs 2 processes differ at {name}")


def test_fsdp_with_the_model_as_one_unit_matches_one_process(runs):
    """FSDP2 on two CPU processes, towers not wrapped on their own (docs/distributed.md), with a
    modality missing from one process's batch: trains, and ends where the unsharded loop ends."""
    sharded, report = read_run(runs, "fsdp", "rank0")
    single, _ = read_run(runs, "fsdp", "single")
    assert report["world_size"] == 2 and all(map(math.isfinite, report["losses"]))
    for name, tensor in single.items():
        torch.testing.assert_close(sharded[name], tensor, rtol=1e-4, atol=1e-5, msg=f"FSDP vs 1 process differ at {name}")


def test_accelerate_launch_runs_two_cpu_processes(tmp_path):
    """The `accelerate launch` command from docs/distributed.md (CPU form) starts two processes."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    launch([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())], tmp_path,
           extra_env={"ACCELERATE_USE_CPU": "true"}, script_args=["--variants", "vanilla"])
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("vanilla.rank*.json"))]
    assert [report["world_size"] for report in reports] == [2, 2]
