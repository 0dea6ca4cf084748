"""I2M2's joint fine-tuning budget at zero: the staged I2M2 rows of `methods_suite.py` before any
fine-tuning (the product of the separately trained parts, as `from_i2m2_parts` assembles it) beside
the same rows after `--finetune_epochs` of joint fine-tuning. Takes the suite's options, reads the
parts it saved (`--parts_dir`) and its result lines; writes `benchmarks/results/i2m2_staged_starts.json`
(replacing that suite and budget's rows).

    cd benchmarks
    python staged_starts.py --suite avmnist --avmnist_train 10000 --avmnist_eval 5000 \
        --avmnist_epochs 15 --batch_size 64 --audio_pool 2 --seeds 0 1 2 3 4
    python staged_starts.py --suite fashion --seeds 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from methods_suite import RESULTS, avmnist_splits, fashion_splits, parse_args, suite_budget
from planted import evaluate, read_rows

from i2moe import I2MoEForClassification

OUTPUT = Path(__file__).resolve().parent / "results" / "i2m2_staged_starts.json"


# Per suite: the staged I2M2 rows, each with its inter part, and the unimodal parts.
STAGED_ROWS = {"avmnist": {"i2m2_staged_lf": "vanilla_lf", "i2m2_staged_lrtf": "vanilla_lrtf"},
               "fashion": {"i2m2_staged": "vanilla"}}
UNIMODAL_PARTS = {"avmnist": ("image", "audio"), "fashion": ("image", "text")}


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.suite not in STAGED_ROWS:
        raise SystemExit(f"staged_starts.py: --suite must be one of {sorted(STAGED_ROWS)}")
    torch.set_num_threads(1)
    budget, parts_key = suite_budget(args)
    test = avmnist_splits(args)["test"] if args.suite == "avmnist" else fashion_splits(args)[0]["test"]
    finetuned = {(row["method"], row["seed"]): row["test_accuracy"] for row in read_rows(RESULTS)
                 if row["suite"] == args.suite and row["budget"] == budget}
    rows = []
    for seed in args.seeds:
        parts = Path(args.parts_dir) / parts_key / f"seed{seed}"
        for method, inter in STAGED_ROWS[args.suite].items():
            if (method, seed) not in finetuned:
                continue
            model = I2MoEForClassification.from_i2m2_parts(
                unimodal={name: parts / name for name in UNIMODAL_PARTS[args.suite]}, inter=parts / inter)
            row = {"suite": args.suite, "seed": seed, "method": method, "budget": budget,
                   "product_before_finetuning": round(evaluate(model, test)["accuracy"], 4),
                   "after_finetuning": finetuned[(method, seed)]}
            rows.append(row)
            print(row, flush=True)
    previous = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else []
    kept = [row for row in previous if (row["suite"], row["budget"]) != (args.suite, budget)]
    OUTPUT.write_text(json.dumps(kept + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
