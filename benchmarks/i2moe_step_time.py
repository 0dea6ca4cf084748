"""Step time, inference time, peak memory and ATen operator counts of I2MoE vs vanilla fusion.

Settings (batch 64, 23 classes, transformer fusion with 2 layers and 4 heads):

- `m{2,3}_d256_p16`, `m{2,3}_d768_p32`: given modality embeddings (no towers), M = 2 or 3
  modalities of P tokens of width d; the interaction part and the task loss only.
- `towers_vitb_bertb`: the whole model with ViT-B/16 (224 px) and BERT-base (128 tokens) towers,
  random weights, d = 256 with 16 tokens per modality.

A train step is forward + backward + `Adam(foreach=True).step()` + `zero_grad()`; inference is one
forward in eval mode under `torch.inference_mode()`. Times are medians; on CUDA they are taken with
CUDA events and peak memory with `torch.cuda.max_memory_allocated` (above what the model and inputs
hold before the first step); on CPU with `perf_counter`, each measurement in a fresh subprocess, and
peak memory as the process's peak RSS minus its RSS once the model and inputs are built (coarse).

Writes `benchmarks/results/i2moe_step_time_<cpu|cuda>.json` and `benchmarks/results/i2moe_op_count.json`.

Usage:

    python benchmarks/i2moe_step_time.py --device cpu --steps 50 --big-steps 5
    python benchmarks/i2moe_step_time.py --device cuda --steps 100
    python benchmarks/i2moe_step_time.py --op-count-only
    python benchmarks/i2moe_step_time.py --device cpu --no-op-count --threads 2 --settings m2_d256_p16 m3_d256_p16 \
        --precisions fp32 --steps 30 --methods vanilla i2moe i2moe_guided --output i2moe_step_time_guided_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BertConfig, ViTConfig

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
from i2moe.configuration_i2moe import I2MOE_PAPER_OBJECTIVE
from i2moe.fusion_i2moe import TokenLayout
from i2moe.registry_i2moe import INTERACTIONS
from i2moe.profiling import count_aten_ops, elapsed_ms


RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZE, NUM_LABELS = 64, 23
EMBEDDING_SETTINGS = {  # name -> (modalities, d, tokens per modality)
    "m2_d256_p16": (2, 256, 16),
    "m3_d256_p16": (3, 256, 16),
    "m2_d768_p32": (2, 768, 32),
    "m3_d768_p32": (3, 768, 32),
}
BIG_SETTINGS = ("m2_d768_p32", "m3_d768_p32", "towers_vitb_bertb")
SETTINGS = (*EMBEDDING_SETTINGS, "towers_vitb_bertb")
METHODS = ("vanilla", "i2moe")
# Config method and `i2moe` settings of each benchmark method: `i2moe` is the paper's objective (what the
# reference implements, `i2moe_vs_reference.py`), `i2moe_guided` the package default's (label-guided
# losses on); the operator count measures all three, the timings `METHODS` unless `--methods` says otherwise.
METHOD_CONFIGS = {"vanilla": ("vanilla", None), "i2moe": ("i2moe", I2MOE_PAPER_OBJECTIVE), "i2moe_guided": ("i2moe", {})}
OP_COUNT_METHODS = ("vanilla", "i2moe", "i2moe_guided")
OP_COUNT_SETTINGS = ("m2_d256_p16", "m3_d256_p16")


def fusion_config(method: str, num_modalities: int, hidden_size: int, num_tokens: int, **overrides) -> I2MoEConfig:
    """A transformer-fusion config (2 layers, 4 heads, 23 classes) for a benchmark method of
    `METHOD_CONFIGS`; its towers are placeholders for the given-embedding settings (only their names
    and token counts are used)."""
    modalities = [
        {"name": f"m{index}", "tower": I2MoEFeaturesConfig(input_size=8, hidden_size=8, num_hidden_layers=1),
         "num_tokens": num_tokens}
        for index in range(num_modalities)
    ]
    settings = dict(hidden_size=hidden_size, fusion="transformer", fusion_num_layers=2, fusion_num_heads=4,
                    num_labels=NUM_LABELS)
    settings.update(method_settings(method, overrides))
    return I2MoEConfig(modalities=modalities, **settings)


def method_settings(method: str, overrides: dict) -> dict:
    """`overrides` with the config `method` and `i2moe` settings of benchmark method `method`
    (`METHOD_CONFIGS`); an `i2moe` override is merged into the method's."""
    config_method, i2moe = METHOD_CONFIGS[method]
    settings = {**overrides, "method": config_method}
    if i2moe is not None:
        settings["i2moe"] = {**i2moe, **overrides.get("i2moe", {})}
    return settings


@dataclass
class Bench:
    """One (setting, method): the module, a train-step closure and an inference closure."""

    module: torch.nn.Module
    train_step: callable
    infer: callable


class EmbeddingModel(torch.nn.Module):
    """The interaction part on given tokens, plus the task loss: what a step costs without towers."""

    def __init__(self, config: I2MoEConfig):
        super().__init__()
        layout = TokenLayout(tuple(config.modality_names), tuple(m.num_tokens for m in config.modalities))
        self.interaction = INTERACTIONS.get(config.method)(config, layout)
        self.null_tokens = torch.nn.Parameter(torch.randn(layout.total_tokens, config.hidden_size))
        for module in self.modules():  # stacked weights start as torch.empty; the model's post_init does this
            if hasattr(module, "init_parameters"):
                module.init_parameters(config.initializer_range)

    def forward(self, tokens, present, labels=None):
        result = self.interaction(tokens, present=present, null_tokens=self.null_tokens, labels=labels)
        if labels is None:
            return result.logits
        loss = F.cross_entropy(result.logits.float(), labels)
        return loss if result.interaction_loss is None else loss + result.interaction_loss


def build_embedding_bench(setting: str, method: str, device: str, precision: str, batch_size: int = BATCH_SIZE,
                          compile: bool = False, hidden_size: int | None = None, num_tokens: int | None = None,
                          **overrides) -> Bench:
    """`hidden_size`/`num_tokens` override the setting's sizes (the operator count does not depend on them)."""
    num_modalities, default_hidden_size, default_num_tokens = EMBEDDING_SETTINGS[setting]
    hidden_size, num_tokens = hidden_size or default_hidden_size, num_tokens or default_num_tokens
    config = fusion_config(method, num_modalities, hidden_size, num_tokens, **overrides)
    model = EmbeddingModel(config).to(device)
    tokens = torch.randn(batch_size, num_modalities * num_tokens, hidden_size, device=device)
    present = torch.ones(batch_size, num_modalities, dtype=torch.bool, device=device)
    labels = torch.randint(0, NUM_LABELS, (batch_size,), device=device)
    forward = torch.compile(model) if compile else model
    return _bench(model, forward, dict(tokens=tokens, present=present), labels, device, precision)


def build_towers_bench(method: str, device: str, precision: str, batch_size: int = BATCH_SIZE,
                       compile: bool = False) -> Bench:
    vit = ViTConfig(image_size=224, patch_size=16)  # ViT-B/16 sizes
    bert = BertConfig()  # BERT-base sizes
    config = I2MoEConfig(
        modalities=[{"name": "image", "tower": vit, "pooling": "mean", "num_tokens": 16},
                    {"name": "text", "tower": bert, "pooling": "mean", "num_tokens": 16}],
        hidden_size=256, fusion="transformer", fusion_num_layers=2, fusion_num_heads=4,
        num_labels=NUM_LABELS, **method_settings(method, {}),
    )
    model = I2MoEForClassification(config).to(device)
    inputs = dict(
        image_pixel_values=torch.randn(batch_size, 3, 224, 224, device=device),
        text_input_ids=torch.randint(0, bert.vocab_size, (batch_size, 128), device=device),
        text_attention_mask=torch.ones(batch_size, 128, dtype=torch.long, device=device),
    )
    labels = torch.randint(0, NUM_LABELS, (batch_size,), device=device)

    class LossOnly(torch.nn.Module):  # same call signature as EmbeddingModel
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, labels=None, **kwargs):
            output = self.model(labels=labels, **kwargs)
            return output.logits if labels is None else output.loss

    wrapper = LossOnly()
    forward = torch.compile(wrapper) if compile else wrapper
    return _bench(wrapper, forward, inputs, labels, device, precision)


def _bench(model, forward, inputs: dict, labels, device: str, precision: str) -> Bench:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)
    autocast = (
        (lambda: torch.autocast(device_type=device, dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )

    def train_step():
        model.train()
        with autocast():
            loss = forward(labels=labels, **inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def infer():
        model.eval()
        with torch.inference_mode(), autocast():
            return forward(**inputs)

    return Bench(model, train_step, infer)


def build_bench(setting: str, method: str, device: str, precision: str, **kwargs) -> Bench:
    if setting == "towers_vitb_bertb":
        return build_towers_bench(method, device, precision, **kwargs)
    return build_embedding_bench(setting, method, device, precision, **kwargs)


def count_ops(setting: str, method: str, **sizes) -> dict:
    """ATen operators of one train step and one inference call (CPU, fp32, batch 4), after a warm-up
    step (the first Adam step allocates its state). The count depends on the structure (modalities,
    layers, method), not on the sizes; `sizes` (`hidden_size`, `num_tokens`) shrink the model for speed."""
    # I2MoE as it runs where launches dominate (GPUs): one stacked expert call, not CPU chunks.
    execution = {"i2moe": {"execution": "stacked"}} if method.startswith("i2moe") else {}
    bench = build_bench(setting, method, "cpu", "fp32", batch_size=4, **sizes, **execution)
    bench.train_step()
    bench.infer()
    return {"setting": setting, "method": method, "train_ops": count_aten_ops(bench.train_step),
            "infer_ops": count_aten_ops(bench.infer)}


def time_fn(fn, device: str, steps: int, warmup: int) -> float:
    """Median milliseconds of `fn()` over `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = [elapsed_ms(fn, device) for _ in range(steps)]
    return statistics.median(times)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def measure(setting: str, precision: str, method: str, device: str, steps: int, warmup: int,
            compile: bool, batch_size: int = BATCH_SIZE) -> dict:
    torch.manual_seed(0)
    bench = build_bench(setting, method, device, precision, compile=compile, batch_size=batch_size)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_memory = torch.cuda.memory_allocated()
    else:
        base_memory = _current_rss_mib()
    train_ms = time_fn(bench.train_step, device, steps, warmup)
    infer_ms = time_fn(bench.infer, device, steps, warmup)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_memory) / 2**20
    else:
        peak = _peak_rss_mib() - base_memory
    del bench
    return {"setting": setting, "precision": precision, "method": method, "train_ms": round(train_ms, 3),
            "infer_ms": round(infer_ms, 3), "peak_mem_mib": round(peak, 1), "device": device, "batch_size": batch_size,
            "steps": steps, "warmup": warmup, "compile": compile}


def measure_in_subprocess(args: list[str]) -> dict:
    """Run one measurement in a fresh process, so the CPU peak-RSS figure is this setting's alone."""
    result = subprocess.run([sys.executable, __file__, "--single", *args], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def deviation_note(row: dict) -> str:
    """Say where a row departs from the protocol (batch 64, >= 50 timed steps), as on a slow CPU."""
    departures = []
    if row["batch_size"] != BATCH_SIZE:
        departures.append(f"batch {row['batch_size']} instead of {BATCH_SIZE}")
    if row["steps"] < 50:
        departures.append(f"median of {row['steps']} timed steps instead of >= 50")
    return "; ".join(departures)


def print_ratios(rows: list[dict]) -> None:
    by_key = {(row["setting"], row["precision"], row["method"]): row for row in rows}
    for (setting, precision, method), row in by_key.items():
        vanilla = by_key.get((setting, precision, "vanilla"))
        if method == "vanilla" or vanilla is None:
            continue
        print(
            f"{setting:18s} {precision:4s} {method:12s} train {row['train_ms']:9.1f} ms ({row['train_ms'] / vanilla['train_ms']:.2f}x "
            f"vanilla)  infer {row['infer_ms']:9.1f} ms ({row['infer_ms'] / vanilla['infer_ms']:.2f}x)  "
            f"peak {row['peak_mem_mib']:8.1f} MiB (vanilla {vanilla['peak_mem_mib']:.1f})"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--big-steps", type=int, default=None,
                        help=f"timed steps for the big settings {BIG_SETTINGS} (default: --steps); for slow CPUs")
    parser.add_argument("--big-warmup", type=int, default=None, help="warm-up steps for the big settings")
    parser.add_argument("--big-batch", type=int, default=BATCH_SIZE,
                        help="batch size of the big settings (default 64; smaller only where a CPU cannot run them)")
    parser.add_argument("--single", nargs=7, metavar=("SETTING", "PRECISION", "METHOD", "DEVICE", "STEPS", "WARMUP",
                                                      "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (smoke test of compile)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHOD_CONFIGS), default=list(METHODS),
                        help="methods timed (`i2moe_guided`: the default objective; the operator count measures all)")
    parser.add_argument("--output", default=None,
                        help="file name under results/ for the timings (default i2moe_step_time_<device>.json)")
    parser.add_argument("--op-count-only", action="store_true")
    parser.add_argument("--no-op-count", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.single:
        setting, precision, method, device, steps, warmup, batch = args.single
        print(json.dumps(measure(setting, precision, method, device, int(steps), int(warmup), args.compile, int(batch))))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)

    if not args.no_op_count:
        op_rows = [count_ops(setting, method) for setting in OP_COUNT_SETTINGS for method in OP_COUNT_METHODS]
        (RESULTS / "i2moe_op_count.json").write_text(json.dumps(op_rows, indent=2) + "\n")
        for setting in OP_COUNT_SETTINGS:
            vanilla, *others = (next(r for r in op_rows if r["setting"] == setting and r["method"] == m)
                                for m in OP_COUNT_METHODS)
            for row in others:
                print(f"ops {setting} {row['method']}: train {row['train_ops']} vs {vanilla['train_ops']} "
                      f"({row['train_ops'] / vanilla['train_ops']:.2f}x), infer {row['infer_ops']} vs "
                      f"{vanilla['infer_ops']} ({row['infer_ops'] / vanilla['infer_ops']:.2f}x)")
        if args.op_count_only:
            return

    out_path = RESULTS / (args.output or f"i2moe_step_time_{args.device}.json")
    # Rows of earlier runs for other (setting, precision, method) are kept: settings can be run apart.
    rows = json.loads(out_path.read_text()) if out_path.exists() else []
    for setting in args.settings:
        big = setting in BIG_SETTINGS
        steps = args.big_steps if big and args.big_steps else args.steps
        warmup = args.big_warmup if big and args.big_warmup is not None else args.warmup
        for precision in args.precisions:
            for method in args.methods:
                batch = args.big_batch if big else BATCH_SIZE
                if args.device == "cpu":
                    extra = ["--compile"] * args.compile + (["--threads", str(args.threads)] if args.threads else [])
                    row = measure_in_subprocess([setting, precision, method, "cpu", str(steps), str(warmup), str(batch),
                                                 *extra])
                else:
                    row = measure(setting, precision, method, args.device, steps, warmup, args.compile, batch)
                row.update(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.processor()
                           or platform.machine(), note=deviation_note(row))
                print(json.dumps(row), flush=True)
                rows = [r for r in rows if (r["setting"], r["precision"], r["method"]) != (setting, precision, method)]
                rows.append(row)
                out_path.write_text(json.dumps(rows, indent=2) + "\n")  # partial results survive a kill
    print_ratios(rows)


if __name__ == "__main__":
    sys.exit(main())
