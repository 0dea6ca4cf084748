"""Side-by-side step times of our I2MoE against the reference implementation, in one process.

The reference (github.com/Raina-Xin/I2MoE; its `Transformer` fusion and `InteractionMoE`, unmodified)
is imported from a checkout given on the command line, never committed here:

    git --git-dir=<mirror of Raina-Xin/I2MoE> archive HEAD src | tar -x -C /tmp/i2moe_ref
    python benchmarks/i2moe_vs_reference.py --reference /tmp/i2moe_ref --device cpu

Both are built at the same settings: batch 64, 23 classes, transformer fusion (2 layers, 4 heads,
MLP width 2d: the reference hard-codes `hidden_times=2`, so ours gets `fusion_intermediate_size=2d`),
dropout 0.1 everywhere, embeddings given (M modalities of 16 tokens of width 256), Adam. Each
timed step alternates between the two implementations (reference, ours, reference, ...), so load on
a shared machine hits both alike; figures are medians. Rows (one per setting x precision x step x
variant) go to `benchmarks/results/i2moe_vs_reference_<device>.json`: `reference_ms`, `ours_ms`
(I2MoE) and `reference_vanilla_ms`, `ours_vanilla_ms` (the same fusion backbone alone).
`--peak-memory` measures the peak memory of a train step instead (CPU: the process's peak RSS growth
in a fresh subprocess per implementation, at a fixed malloc mmap threshold; CUDA:
`max_memory_allocated`) into `i2moe_peak_memory_<device>.json`. `--saved-activations` measures training memory independently of the
allocator (the bytes the autograd graph of one train forward keeps); `--chunk-sweep` times ours at
several `chunk_rows`; `--ours-mlp-ratio 4` gives ours its default MLP width (4d) instead of the
reference's; `--table` prints the docs table from the JSON. On a GPU machine:

    python benchmarks/i2moe_vs_reference.py --reference /tmp/i2moe_ref --device cuda --steps 50 --warmup 5

Import shims (they change no reference code): the reference's `transformer.py` imports torchvision and
FastMoE (`fmoe`, for its sparse MLP, unused at `mlp_sparse=False`) at module level, so stub modules
stand in for those when they are not installed; its `Transformer` calls `.cuda()` on its head while
being built, which is a no-op here while the model is built for CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from i2moe_step_time import EMBEDDING_SETTINGS, EmbeddingModel, fusion_config  # noqa: E402
from i2moe.profiling import elapsed_ms  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZE, NUM_LABELS, NUM_LAYERS, NUM_HEADS, DROPOUT, REWEIGHT_HIDDEN = 64, 23, 2, 4, 0.1, 128
SETTINGS = ("m2_d256_p16", "m3_d256_p16")
IMPLEMENTATIONS = ("reference", "ours")
METHODS = ("i2moe", "vanilla")


def import_reference(directory: str):
    """The reference's `Transformer` and `InteractionMoE` classes from a checkout of its repository."""
    root = Path(directory).resolve()
    if not (root / "src" / "imoe" / "InteractionMoE.py").exists():
        raise SystemExit(f"--reference {directory}: expected a checkout of Raina-Xin/I2MoE (src/imoe/InteractionMoE.py)")
    for name in ("torchvision", "torchvision.models"):  # imported at module level, unused by these classes
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]
    # The MoE module needs FastMoE's CUDA extension; the dense transformer never touches it.
    sys.modules.setdefault("src.common.modules.moe", types.ModuleType("src.common.modules.moe"))
    sys.path.insert(0, str(root))
    from src.common.fusion_models.transformer import Transformer
    from src.imoe.InteractionMoE import InteractionMoE
    return Transformer, InteractionMoE


@contextlib.contextmanager
def cuda_calls_ignored(device: str):
    """The reference's Transformer puts its head on CUDA while being built; on CPU that call must not run."""
    if device == "cuda":
        yield
        return
    original = torch.nn.Module.cuda
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.nn.Module.cuda = original


class ReferenceModel(torch.nn.Module):
    """The reference's model and loss as its `imoe_train.py` computes them: cross-entropy of the
    weighted logits plus `interaction_loss_weight * mean of the K interaction losses`."""

    def __init__(self, classes, method: str, num_modalities: int, hidden_size: int, num_tokens: int,
                 lambda_int: float, device: str):
        super().__init__()
        transformer_class, moe_class = classes
        with cuda_calls_ignored(device):
            backbone = transformer_class(
                num_modalities, num_tokens, hidden_size, NUM_LABELS, NUM_LAYERS, 1, num_experts=1, num_routers=1,
                top_k=1, num_heads=NUM_HEADS, dropout=DROPOUT, mlp_sparse=False,
            )
        self.method, self.lambda_int, self.num_modalities = method, lambda_int, num_modalities
        self.model = backbone if method == "vanilla" else moe_class(
            num_modalities, backbone, fusion_sparse=False, hidden_dim=hidden_size, hidden_dim_rw=REWEIGHT_HIDDEN,
            num_layer_rw=2,
        )

    def forward(self, tokens, labels=None):
        inputs = list(tokens.chunk(self.num_modalities, dim=1))
        if self.method == "vanilla":
            logits = self.model(inputs)
            return logits if labels is None else F.cross_entropy(logits, labels)
        if labels is None:
            return self.model.inference(inputs)[2]
        _, _, logits, interaction_losses = self.model(inputs)
        return F.cross_entropy(logits, labels) + self.lambda_int * sum(interaction_losses) / (self.num_modalities + 2)


class OursModel(torch.nn.Module):
    """Our interaction part on the same given tokens (`i2moe_step_time.EmbeddingModel`)."""

    def __init__(self, method: str, num_modalities: int, hidden_size: int, num_tokens: int, overrides: dict,
                 mlp_ratio: int = 2):
        super().__init__()
        config = fusion_config(method, num_modalities, hidden_size, num_tokens, dropout=DROPOUT,
                               fusion_intermediate_size=mlp_ratio * hidden_size,
                               **({"i2moe": {"reweight_hidden_size": REWEIGHT_HIDDEN, **overrides}}
                                  if method == "i2moe" else {}))
        self.model = EmbeddingModel(config)
        self.num_modalities = num_modalities
        self.present = None

    def forward(self, tokens, labels=None):
        if self.present is None or self.present.shape[0] != tokens.shape[0]:
            self.present = torch.ones(tokens.shape[0], self.num_modalities, dtype=torch.bool, device=tokens.device)
        return self.model(tokens, self.present, labels)


def build(implementation: str, method: str, setting: str, device: str, classes, overrides: dict,
          mlp_ratio: int = 2) -> torch.nn.Module:
    num_modalities, hidden_size, num_tokens = EMBEDDING_SETTINGS[setting]
    torch.manual_seed(0)
    if implementation == "reference":
        model = ReferenceModel(classes, method, num_modalities, hidden_size, num_tokens, 0.1, device)
    else:
        model = OursModel(method, num_modalities, hidden_size, num_tokens, overrides, mlp_ratio)
    return model.to(device)


def step_functions(model: torch.nn.Module, tokens, labels, device: str, precision: str):
    """(train step, inference call) closures: forward + backward + Adam step; eval-mode forward."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = (lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)) if precision == "bf16" \
        else contextlib.nullcontext

    def train():
        model.train()
        with autocast():
            loss = model(tokens, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer():
        model.eval()
        with torch.inference_mode(), autocast():
            model(tokens)

    return train, infer


def alternate(functions: dict, device: str, steps: int, warmup: int) -> dict:
    """Median ms of each function, calling them in turn (a, b, c, a, b, c, ...)."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    times = {name: [] for name in functions}
    for _ in range(steps):
        for name, fn in functions.items():
            times[name].append(elapsed_ms(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


# glibc's malloc raises its mmap threshold to the size of each large block freed, so after the first
# step the activations of the next come from heap memory that is never returned to the OS: the RSS
# between steps then holds the last step's peak, and "peak minus RSS between steps" measured only how
# much malloc happened to keep (our numbers were 0.4-2.5x the reference's while the saved
# activations were 0.95x). A fixed threshold turns that off: every block above 64 KiB is mapped and
# unmapped with its tensor, so the RSS between steps is the persistent memory (weights, Adam state,
# inputs) and the growth above it the step's own peak.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def peak_memory_mib(implementation: str, method: str, setting: str, device: str, precision: str, reference: str,
                    overrides: dict, fixed_mmap_threshold: bool = True) -> float:
    """Peak memory of a train step above what the model, its Adam state and the inputs hold."""
    if device == "cpu":  # peak RSS is per process: measure each one in a fresh interpreter
        command = [sys.executable, __file__, "--reference", reference, "--memory-only", implementation, method,
                   setting, precision, "--overrides", json.dumps(overrides), "--threads", str(torch.get_num_threads())]
        env = {key: value for key, value in os.environ.items() if key not in FIXED_MMAP_THRESHOLD}
        if fixed_mmap_threshold:
            env.update(FIXED_MMAP_THRESHOLD)
        return float(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout.split()[-1])
    return _measure_peak(implementation, method, setting, device, precision, import_reference(reference), overrides)


def _measure_peak(implementation, method, setting, device, precision, classes, overrides) -> float:
    tokens, labels = make_inputs(setting, device)
    model = build(implementation, method, setting, device, classes, overrides)
    train, _ = step_functions(model, tokens, labels, device, precision)
    train()  # Adam's state exists from here on
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/statm") as statm:
        base = int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    train()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


def saved_activation_mib(model: torch.nn.Module, tokens, labels) -> float:
    """MiB of the distinct tensor storages the autograd graph of one train forward keeps for the
    backward pass: training's activation memory, independent of how the allocator reuses memory
    (which the RSS figure is not)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(tokens, labels)
    del loss
    return sum(storages.values()) / 2**20


def saved_activations(setting: str, device: str, classes, variants: dict[str, dict]) -> list[dict]:
    tokens, labels = make_inputs(setting, device)
    rows = [{"setting": setting, "implementation": "reference", "variant": "default",
             "saved_mib": round(saved_activation_mib(build("reference", "i2moe", setting, device, classes, {}),
                                                     tokens, labels), 1)}]
    for variant, overrides in variants.items():
        model = build("ours", "i2moe", setting, device, classes, overrides)
        rows.append({"setting": setting, "implementation": "ours", "variant": variant, "overrides": overrides,
                     "saved_mib": round(saved_activation_mib(model, tokens, labels), 1)})
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def make_inputs(setting: str, device: str):
    num_modalities, hidden_size, num_tokens = EMBEDDING_SETTINGS[setting]
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(BATCH_SIZE, num_modalities * num_tokens, hidden_size, generator=generator).to(device)
    labels = torch.randint(0, NUM_LABELS, (BATCH_SIZE,), generator=generator).to(device)
    return tokens, labels


def measure_setting(setting: str, precision: str, device: str, steps: int, warmup: int, classes,
                    variant: str, overrides: dict, mlp_ratio: int = 2) -> list[dict]:
    tokens, labels = make_inputs(setting, device)
    functions = {}
    for implementation in IMPLEMENTATIONS:
        for method in METHODS:
            model = build(implementation, method, setting, device, classes,
                          overrides if implementation == "ours" else {}, mlp_ratio)
            functions[(implementation, method)] = step_functions(model, tokens, labels, device, precision)
    rows = []
    for index, step in enumerate(("train", "inference")):
        medians = alternate({key: pair[index] for key, pair in functions.items()}, device, steps, warmup)
        row = {
            "setting": setting, "precision": precision, "step": step, "variant": variant, "overrides": overrides,
            "ours_mlp_width": f"{mlp_ratio}d", "reference_mlp_width": "2d",
            "reference_ms": round(medians[("reference", "i2moe")], 2), "ours_ms": round(medians[("ours", "i2moe")], 2),
            "reference_vanilla_ms": round(medians[("reference", "vanilla")], 2),
            "ours_vanilla_ms": round(medians[("ours", "vanilla")], 2),
        }
        row["ours_over_reference"] = round(row["ours_ms"] / row["reference_ms"], 3)
        row["vanilla_ours_over_reference"] = round(row["ours_vanilla_ms"] / row["reference_vanilla_ms"], 3)
        row["reference_over_vanilla"] = round(row["reference_ms"] / row["reference_vanilla_ms"], 2)
        row["ours_over_vanilla"] = round(row["ours_ms"] / row["ours_vanilla_ms"], 2)
        row.update(device=device, batch_size=BATCH_SIZE, steps=steps, warmup=warmup, threads=torch.get_num_threads(),
                   torch=torch.__version__, machine=platform.processor() or platform.machine())
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def chunk_sweep(setting: str, precision: str, device: str, steps: int, warmup: int, sizes: list[int]) -> list[dict]:
    """Our train step and inference at several `chunk_rows` (0: stacked), alternating, one process."""
    tokens, labels = make_inputs(setting, device)
    functions = {}
    for size in sizes:
        overrides = {"execution": "stacked"} if size == 0 else {"execution": "chunked", "chunk_rows": size}
        model = build("ours", "i2moe", setting, device, None, overrides)
        functions[size] = step_functions(model, tokens, labels, device, precision)
    rows = []
    for index, step in enumerate(("train", "inference")):
        medians = alternate({size: pair[index] for size, pair in functions.items()}, device, steps, warmup)
        for size, value in medians.items():
            rows.append({"setting": setting, "precision": precision, "step": step, "chunk_rows": size or "stacked",
                         "ours_ms": round(value, 2), "steps": steps, "threads": torch.get_num_threads()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The docs table (docs/i2moe.md) of the rows of `i2moe_vs_reference_<device>.json`."""
    lines = ["| setting | precision | variant | step | reference | ours | ours / reference | "
             "vanilla: reference, ours (ours / reference) | I2MoE / vanilla: reference, ours |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['precision']} | {row['variant']} | {row['step']} | {row['reference_ms']:.0f} ms | "
            f"{row['ours_ms']:.0f} ms | **{row['ours_over_reference']:.2f}x** | {row['reference_vanilla_ms']:.0f}, "
            f"{row['ours_vanilla_ms']:.0f} ms ({row['vanilla_ours_over_reference']:.2f}x) | "
            f"{row['reference_over_vanilla']:.1f}x, {row['ours_over_vanilla']:.1f}x |")
    return "\n".join(lines)


# Our variants whose training peak is compared with the reference's (`--peak-memory`).
MEMORY_VARIANTS = {"default": {}, "checkpoint_experts": {"checkpoint_experts": True},
                   "subsample_0.25": {"perturbation_fraction": 0.25}}


def peak_memory_rows(settings: list[str], device: str, reference: str) -> list[dict]:
    """The training peak of the reference and of each of our `MEMORY_VARIANTS` (fp32); on CPU also as
    glibc's default malloc reports it (`FIXED_MMAP_THRESHOLD` explains why that figure misleads)."""
    rows = []
    for setting in settings:
        measured = [("reference", "reference", {})] + [("ours", name, overrides) for name, overrides in MEMORY_VARIANTS.items()]
        for implementation, variant, overrides in measured:
            row = {"setting": setting, "precision": "fp32", "implementation": implementation, "variant": variant,
                   "overrides": overrides, "device": device,
                   "peak_mib": round(peak_memory_mib(implementation, "i2moe", setting, device, "fp32", reference, overrides), 1)}
            if device == "cpu":
                row["peak_mib_default_malloc"] = round(peak_memory_mib(implementation, "i2moe", setting, device, "fp32",
                                                                       reference, overrides, fixed_mmap_threshold=False), 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=None, help="directory of a checkout of github.com/Raina-Xin/I2MoE")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per implementation (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variant", default="default", help="name of this row set in the JSON (e.g. subsample_0.25)")
    parser.add_argument("--overrides", default="{}", help="JSON of `config.i2moe` fields for ours (e.g. subsampling)")
    parser.add_argument("--ours-mlp-ratio", type=int, default=2,
                        help="our transformer MLP width / d (2: the reference's; 4: our default)")
    parser.add_argument("--peak-memory", action="store_true",
                        help="only the training peak of the reference and our variants, each in a fresh process (CPU: "
                             "peak RSS growth at a fixed malloc mmap threshold; CUDA: max_memory_allocated); writes "
                             "i2moe_peak_memory_<device>.json")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunk-sweep", nargs="+", type=int, default=None, metavar="ROWS",
                        help="time only ours at these chunk_rows (0: stacked); writes i2moe_chunk_sweep_<device>.json")
    parser.add_argument("--saved-activations", action="store_true",
                        help="only the autograd graph's saved bytes of one train forward, reference and ours "
                             "(stacked, auto, checkpointed, subsampled 0.25); writes i2moe_saved_activations_<device>.json")
    parser.add_argument("--table", action="store_true", help="only print the markdown table of the results JSON")
    parser.add_argument("--memory-only", nargs=4, metavar=("IMPL", "METHOD", "SETTING", "PRECISION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_path = RESULTS / f"i2moe_vs_reference_{args.device}.json"
    if args.table:  # needs no reference checkout
        print(markdown_table(json.loads(out_path.read_text())))
        return
    if args.reference is None:
        parser.error("--reference DIRECTORY (a checkout of github.com/Raina-Xin/I2MoE) is required")
    overrides = json.loads(args.overrides)
    classes = import_reference(args.reference)
    if args.memory_only:
        implementation, method, setting, precision = args.memory_only
        print(_measure_peak(implementation, method, setting, args.device, precision, classes, overrides))
        return
    if args.peak_memory:
        path = RESULTS / f"i2moe_peak_memory_{args.device}.json"
        path.write_text(json.dumps(peak_memory_rows(args.settings, args.device, args.reference), indent=2) + "\n")
        return
    if args.saved_activations:
        variants = {"stacked": {"execution": "stacked"}, "auto": {}, "checkpoint_experts": {"checkpoint_experts": True},
                    "subsample_0.25": {"perturbation_fraction": 0.25}}
        path = RESULTS / f"i2moe_saved_activations_{args.device}.json"
        rows = [row for row in (json.loads(path.read_text()) if path.exists() else []) if row["setting"] not in args.settings]
        rows += [row for setting in args.settings for row in saved_activations(setting, args.device, classes, variants)]
        path.write_text(json.dumps(rows, indent=2) + "\n")
        return
    if args.chunk_sweep:
        rows = [row for setting in args.settings for precision in args.precisions
                for row in chunk_sweep(setting, precision, args.device, args.steps, args.warmup, args.chunk_sweep)]
        (RESULTS / f"i2moe_chunk_sweep_{args.device}.json").write_text(json.dumps(rows, indent=2) + "\n")
        return
    rows = json.loads(out_path.read_text()) if out_path.exists() else []
    for setting in args.settings:
        for precision in args.precisions:
            new = measure_setting(setting, precision, args.device, args.steps, args.warmup, classes,
                                  args.variant, overrides, mlp_ratio=args.ours_mlp_ratio)
            keys = {(r["setting"], r["precision"], r["step"], r["variant"]) for r in new}
            rows = [r for r in rows if (r["setting"], r["precision"], r["step"], r["variant"]) not in keys] + new
            RESULTS.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(rows, indent=2) + "\n")  # partial results survive a kill


if __name__ == "__main__":
    main()
