"""The demo's model at other seeds: how far its test accuracy is from the text-only baseline.

Runs `examples/run_classification.py` with the arguments `examples/demo.sh` gives it (read from
that file, so they cannot drift apart), with another `--seed` and output folder and without the
unimodal baselines and missing-modality evaluations (their figures do not depend on the I2MoE
model). The frozen towers' cached features are shared with the demo (`I2MOE_CACHE`), so a seed
costs only the training. One JSON row per seed, appended (a rerun skips the seeds it has for the
same arguments and config format version: the version marks a change of the defaults' objective, as
the label-guided losses of version 3; rows without it are version 2).

    python benchmarks/demo_seeds.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import run_classification  # noqa: E402
from i2moe.configuration_i2moe import FORMAT_VERSION  # noqa: E402


RESULTS = ROOT / "benchmarks" / "results" / "demo_seeds.json"
# Flags of the demo's command left out here: the baselines, and the evaluations with a modality missing.
DROPPED = {"--unimodal_baselines": 0, "--eval_missing_modality": 2, "--output_dir": 1, "--seed": 1}


def demo_arguments() -> list[str]:
    """The arguments examples/demo.sh passes to run_classification.py, without `DROPPED`."""
    script = (ROOT / "examples" / "demo.sh").read_text()
    start = script.index('examples/run_classification.py"') + len('examples/run_classification.py"')
    words = shlex.split(script[start:].split("\n\n", 1)[0].replace("\\\n", " "))
    arguments, index = [], 0
    while index < len(words):
        if words[index] in DROPPED:
            index += 1 + DROPPED[words[index]]
            continue
        arguments.append(words[index])
        index += 1
    return arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    args = parser.parse_args()
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    arguments = demo_arguments()
    for seed in args.seeds:
        if any(row["seed"] == seed and row["arguments"] == arguments and row.get("i2moe_format_version", 2) == FORMAT_VERSION
               for row in rows):
            continue
        with tempfile.TemporaryDirectory() as output:
            results = run_classification.main([*arguments, "--output_dir", output, "--seed", str(seed)])
        rows.append({"seed": seed, "test_accuracy": round(results["test_accuracy"], 4),
                     "test_macro_f1": round(results["test_macro_f1"], 4), "arguments": arguments,
                     "i2moe_format_version": FORMAT_VERSION})
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"seed {seed}: test accuracy {rows[-1]['test_accuracy']:.4f}, macro-F1 {rows[-1]['test_macro_f1']:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
