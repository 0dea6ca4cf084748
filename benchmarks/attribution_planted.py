"""I2MoE's weights and DMIL's gate beside the interaction attribution, on planted interactions.

The planted suite of `i2moe.synthetic` (2 modalities of 16 features, 4 classes; the label carried by
`a` only, `b` only, both, or only by the sum of a digit of each mod 4; and a per-sample mixture of
the four), every model trained with modality dropout 0.3 (`train_planted`). For each method, kind
and seed, on 2048 held-out samples:

- the model's accuracy;
- the dominant type by the attribution (largest mean term) and, for I2MoE / DMIL, by the weights
  (largest mean weight, `i2moe.interpretation`);
- on the mixture, per type, the per-sample AUROC of the sample's planted type: the attribution
  term, and the weight of the component of that name.

Then the same for the 3-modality suite (vanilla only). Writes
`benchmarks/results/attribution_planted.json` and prints one line per run:

    python benchmarks/attribution_planted.py
    python benchmarks/attribution_planted.py --seeds 0 --methods vanilla i2moe
    python benchmarks/attribution_planted.py --markdown     # docs/interpretation.md's tables, from the JSON
    python benchmarks/attribution_planted.py --methods i2moe_normuni --no-three_modalities \
        --output attribution_planted_normuni.json               # a variant, beside the stored runs
    python benchmarks/attribution_planted.py --methods i2moe_guided --no-three_modalities \
        --output attribution_planted_guided.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from i2moe.attribution import attribute
from i2moe.configuration_i2moe import I2MOE_PAPER_OBJECTIVE
from i2moe.interpretation import interpret
from i2moe.synthetic import auroc, held_out_planted, planted_samples, planted_types, train_planted


RESULTS = Path(__file__).resolve().parent / "results"
# (steps, Adam learning rate, config overrides) per number of modalities.
TRAINING = {2: (400, 3e-3, {}), 3: (600, 3e-3, {"hidden_size": 64, "fusion_hidden_size": 64})}
# `i2moe`: the paper's objective, pinned (the package default adds the label-guided losses: `i2moe_guided`).
METHODS = {"vanilla": ("vanilla", {}), "i2moe": ("i2moe", {"i2moe": I2MOE_PAPER_OBJECTIVE}), "dmil": ("dmil", {}),
           "vanilla+i2m2": ("vanilla", {"i2m2_heads": True}),
           # the uniqueness triplet on unit-normalised logits (`docs/i2moe.md`, "Collapse")
           "i2moe_normuni": ("i2moe", {"i2moe": {**I2MOE_PAPER_OBJECTIVE, "uniqueness_distance": "normalized"}}),
           # the label-guided interaction losses (`docs/i2moe.md`, "Label-guided interaction losses")
           "i2moe_guided": ("i2moe", {"i2moe": {"label_guidance_weight": 3.0}}),
           "i2moe_guided1": ("i2moe", {"i2moe": {"label_guidance_weight": 1.0}})}


def run(method: str, kind: str, num_modalities: int, seed: int, size: int) -> dict:
    steps, lr, overrides = TRAINING[num_modalities]
    base, extra = METHODS[method]
    model = train_planted(kind, num_modalities, base, steps=steps, lr=lr, seed=seed, **overrides, **extra)
    batch = held_out_planted(kind, num_modalities, size=size)
    samples = planted_samples(batch)
    result = attribute(model, samples, batch_size=512, progress=False)
    summary = result.summary()
    row = {"method": method, "kind": kind, "num_modalities": num_modalities, "seed": seed, "steps": steps,
           "accuracy": round(float((result.predictions == result.labels).mean()), 4),
           "attribution_dominant": summary["dominant_type"],
           "attribution_mean": _rounded(summary["overall"]["mean"])}
    weights = None
    if base in ("i2moe", "dmil"):
        weights = interpret(model, samples, batch_size=512, progress=False)
        weight_summary = weights.summary()
        row["weights_dominant"] = weight_summary["dominant_type"]
        row["weights_mean"] = _rounded(weight_summary["overall"]["mean_weight"])
        row["components_carry"] = {name: stats["dominant_type"]
                                   for name, stats in summary["model_components"].items()}
    if kind == "mixture":
        planted = batch["planted"].numpy()
        types = planted_types(num_modalities)
        row["attribution_auroc"] = {t: round(auroc(result.values[:, k], planted == k), 3) for k, t in enumerate(types)}
        if weights is not None:
            row["weights_auroc"] = {t: round(auroc(weights.weights[:, weights.component_names.index(t)], planted == k), 3)
                                    for k, t in enumerate(types) if t in weights.component_names}
    return row


def _rounded(values: dict) -> dict:
    return {name: round(value, 3) for name, value in values.items()}


# --- the tables of docs/interpretation.md, from the stored rows ---

SHORT = {"uniqueness": "U", "redundancy": "R", "synergy": "S"}
# (column title, method, what is read: the attribution's or the weights' dominant type)
DOMINANT_COLUMNS = [("I2MoE weights", "i2moe", "weights"), ("I2MoE attribution", "i2moe", "attribution"),
                    ("DMIL gate", "dmil", "weights"), ("DMIL attribution", "dmil", "attribution"),
                    ("vanilla attribution", "vanilla", "attribution"),
                    ("vanilla + I2M2 attribution", "vanilla+i2m2", "attribution")]
WEIGHTS_NAME = {"i2moe": "weights", "dmil": "gate"}  # what each method calls its per-sample weights


def short_type(name: str) -> str:
    """`uniqueness_a` -> `U_a`, `synergy_a_b` -> `S_a_b`, `redundancy` -> `R`."""
    head, _, tail = name.partition("_")
    return SHORT[head] + (f"_{tail}" if tail else "")


def _cell(rows: list[dict], read: str, planted: str | None) -> str:
    """One cell over seeds: the dominant type read from `read` and the accuracy, bold where it is `planted`."""
    parts = []
    for row in rows:
        name = short_type(row[f"{read}_dominant"])
        parts.append(f"{f'**{name}**' if row[f'{read}_dominant'] == planted else name} ({row['accuracy']:.2f})")
    return " / ".join(parts)


def _select(rows: list[dict], num_modalities: int, method: str, kind: str) -> list[dict]:
    return sorted((row for row in rows if (row["num_modalities"], row["method"], row["kind"]) == (num_modalities, method, kind)),
                  key=lambda row: row["seed"])


def markdown_tables(stored: dict) -> str:
    """The two-modality tables (dominant type per planted kind; per-sample AUROC on the mixture) and the
    three-modality ones (vanilla), each cell `seed 0 / seed 1`."""
    rows = stored["rows"]
    lines = ["| planted | " + " | ".join(title for title, _, _ in DOMINANT_COLUMNS) + " |",
             "|---|" + "---|" * len(DOMINANT_COLUMNS)]
    for kind in [*planted_types(2), "mixture"]:
        planted = kind if kind != "mixture" else None
        cells = [_cell(_select(rows, 2, method, kind), read, planted) for _, method, read in DOMINANT_COLUMNS]
        lines.append(f"| `{kind}` | " + " | ".join(cells) + " |")
    types = planted_types(2)
    lines += ["", "| model | read from | " + " | ".join(short_type(t) for t in types) + " |", "|---|---|" + "---|" * len(types)]
    for method in ("i2moe", "dmil", "vanilla", "vanilla+i2m2"):
        for read in ("weights", "attribution"):
            selected = [row for row in _select(rows, 2, method, "mixture") if f"{read}_auroc" in row]
            if selected:
                values = [" / ".join(f"{row[f'{read}_auroc'][t]:.2f}" for row in selected) for t in types]
                source = read if read == "attribution" else WEIGHTS_NAME[method]
                lines.append(f"| {method} | {source} | " + " | ".join(values) + " |")
    types = planted_types(3)
    lines += ["", "| planted (3 modalities) | vanilla attribution | mixture: per-sample AUROC |", "|---|---|---|"]
    mixture = _select(rows, 3, "vanilla", "mixture")
    for kind in types:
        auroc_cell = " / ".join(f"{row['attribution_auroc'][kind]:.2f}" for row in mixture)
        lines.append(f"| `{kind}` | {_cell(_select(rows, 3, 'vanilla', kind), 'attribution', kind)} | {auroc_cell} |")
    accuracy = " / ".join(f"{row['accuracy']:.2f}" for row in mixture)
    lines.append(f"| `mixture` | accuracy {accuracy} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["vanilla", "i2moe", "dmil", "vanilla+i2m2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--three_modalities", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--markdown", action="store_true", help="print the docs tables of the stored results and stop")
    parser.add_argument("--output", default="attribution_planted.json",
                        help="the JSON under benchmarks/results/ that the runs are written to (rewritten as they finish)")
    args = parser.parse_args()
    if args.markdown:
        print(markdown_tables(json.loads((RESULTS / "attribution_planted.json").read_text())))
        return
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    runs = [(method, kind, 2) for method in args.methods for kind in [*planted_types(2), "mixture"]]
    if args.three_modalities:
        runs += [("vanilla", kind, 3) for kind in [*planted_types(3), "mixture"]]
    rows = []
    for method, kind, num_modalities in runs:
        for seed in args.seeds:
            row = run(method, kind, num_modalities, seed, args.size)
            rows.append(row)
            line = (f"M={num_modalities} {method:12s} {kind:14s} seed {seed}: accuracy {row['accuracy']:.3f}, "
                    f"attribution -> {row['attribution_dominant']}")
            if "weights_dominant" in row:
                line += f", weights -> {row['weights_dominant']}"
            if "attribution_auroc" in row:
                line += f"; AUROC attribution {row['attribution_auroc']}"
                if "weights_auroc" in row:
                    line += f", weights {row['weights_auroc']}"
            print(line, flush=True)
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / args.output).write_text(json.dumps(
                {"command": "python benchmarks/attribution_planted.py " + " ".join(sys.argv[1:]),
                 "held_out_size": args.size, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
