"""Mutation testing of the core math with mutmut: how many planted changes do the fast tests catch?

Not part of CI (it runs the selected tests once per mutant). Needs `pip install mutmut` (3.x).

    nice -n 10 python tools/mutation_testing.py --label after
    nice -n 10 python tools/mutation_testing.py --label before --tests-ref <commit before the oracle tests>
    python tools/mutation_testing.py --planted        # the issue's named bugs, one at a time

Each run works in a scratch copy (`--workdir`, default /tmp/i2moe-mutation/<label>): `src/` of this
checkout, `tests/` of this checkout or of `--tests-ref`, and a setup.cfg with a `[mutmut]` section
(mutmut reads its settings from the working directory; the project's own setup.cfg stays clean).
The CPU budget is capped by testing a seeded random sample of the mutants (`--sample`, the same
sample for every label, so "before" and "after" are comparable), niced, one worker.

Results go to benchmarks/results/mutation_testing.json under the run's label: kill rate overall
and per file, and every surviving mutant with its diff. `--planted` applies each bug of
`PLANTED_BUGS` to a scratch copy, runs the fast tests, and records which tests fail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import io
from collections import Counter
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutation_testing.json"
CORE_FILES = ["fusion_i2moe.py", "experts_i2moe.py", "dmil_i2moe.py", "i2m2_i2moe.py", "encoders_i2moe.py",
              "modeling_i2moe.py", "noise_i2moe.py"]
# modeling_i2moe.py: only its data-path math (the I2M2 product wiring, modality dropout, the subset pass,
# losses); loading, routing and input checks are covered by the reliability tests instead. Pooling,
# resampling, projection and null tokens are in encoders_i2moe.py, mutated whole.
MODELING_MATH = ("_encode", "_modality_tokens", "_predict", "forward_subsets", "_drop_modalities", "task_loss",
                 "_init_weights")
# The fast core tests (seconds each); the slow training and compile tests are deselected.
TEST_FILES = ["test_fusion.py", "test_i2moe.py", "test_dmil.py", "test_i2m2.py", "test_modeling.py", "test_architecture.py",
              "test_noise.py",
              "test_oracles_fusion.py", "test_oracles_i2moe.py", "test_oracles_dmil.py", "test_oracles_i2m2.py"]
SLOW_TESTS = "not xor and not schedule and not remote_code and not compile and not synthetic and not from_disk"

# The bugs issue 18 lists, plus a few more: (name, file, original text, planted text).
PLANTED_BUGS = [
    ("mask perturbs only the first token of a multi-token modality", "experts_i2moe.py",
     "variant_mask[index + 1, layout.token_slice(index)] = True",
     "variant_mask[index + 1, layout.token_slice(index).start] = True"),
    ("LRTF additive (.prod -> .sum)", "fusion_i2moe.py",
     "batch, self.rank, self.output_size).prod(1)", "batch, self.rank, self.output_size).sum(1)"),
    ("modality mean reads only the first token", "fusion_i2moe.py",
     "return tokens.unflatten(-2, (len(self.num_tokens), -1)).mean(-2)",
     "return tokens.unflatten(-2, (len(self.num_tokens), -1))[..., 0, :]"),
    ("modality mean reads only the first token (uneven layout)", "fusion_i2moe.py",
     "torch.stack([chunk.mean(-2) for chunk", "torch.stack([chunk[..., 0, :] for chunk"),
    ("mean pooling reads only the first token", "encoders_i2moe.py",
     "return sequence.mean(1)", "return sequence[:, 0]"),
    ("DMIL per-head labels misaligned (repeat_interleave -> repeat)", "dmil_i2moe.py",
     "labels.repeat_interleave(num_heads)", "labels.repeat(num_heads)"),
    ("reweighting temperature ignored", "experts_i2moe.py",
     "scale = 1.0 / self.temperature", "scale = 1.0"),
    ("masked mean pooling counts padding", "encoders_i2moe.py",
     "return (sequence * weights).sum(1) / weights.sum(1).clamp(min=1.0)", "return sequence.mean(1)"),
    ("transformer block without the attention residual", "fusion_i2moe.py",
     "hidden_states = hidden_states + self.dropout(self.out(attended))",
     "hidden_states = self.dropout(self.out(attended))"),
    ("resampler ignores the padding mask", "encoders_i2moe.py",
     "attn_mask = None if mask is None else mask[:, None, None, :].bool()", "attn_mask = None"),
    ("DMIL alignment KL reversed (q || p)", "dmil_i2moe.py",
     "redundancy_mean.expand(num_modalities, -1, -1), redundancy_logvar.expand(num_modalities, -1, -1),\n"
     "                conditional_mean, conditional_logvar,",
     "conditional_mean, conditional_logvar,\n"
     "                redundancy_mean.expand(num_modalities, -1, -1), redundancy_logvar.expand(num_modalities, -1, -1),"),
    ("DMIL synergy without the pairwise products", "dmil_i2moe.py",
     "products = inter[self.pair_left] * inter[self.pair_right]",
     "products = inter[self.pair_left] + inter[self.pair_right]"),
    ("I2M2 missing head not dropped (single-label)", "i2m2_i2moe.py",
     "total = (weights * F.log_softmax(unimodal_logits, dim=-1)).sum(1)",
     "total = F.log_softmax(unimodal_logits, dim=-1).sum(1)"),
    ("I2M2 regression mean over all heads", "i2m2_i2moe.py",
     "total, count = total + inter_logits.float(), count + 1", "total, count = total + inter_logits.float(), count"),
    ("uniqueness triplet uses the margin twice", "experts_i2moe.py",
     'torch.full((1, 1, 1), float(self.margin))', 'torch.full((1, 1, 1), 2 * float(self.margin))'),
    ("VIB sample uses the variance, not the standard deviation", "dmil_i2moe.py",
     "standard_normal(noise, mean, self.stream, batch_dim=1) * (0.5 * logvar).exp()",
     "standard_normal(noise, mean, self.stream, batch_dim=1) * logvar.exp()"),
    ("transformer positions not added", "fusion_i2moe.py",
     "hidden_states = tokens + self.position_embeddings", "hidden_states = tokens + 0 * self.position_embeddings"),
]


def scratch_copy(workdir: Path, tests_ref: str | None) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    shutil.copytree(ROOT / "src", workdir / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if tests_ref:
        archive = subprocess.run(["git", "archive", "--format=tar", tests_ref, "tests"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(workdir, filter="data")
    else:
        shutil.copytree(ROOT / "tests", workdir / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", workdir / "pyproject.toml")


def test_paths(workdir: Path) -> list[str]:
    return [f"tests/{name}" for name in TEST_FILES if (workdir / "tests" / name).exists()]


def write_mutmut_config(workdir: Path) -> None:
    lines = ["[mutmut]", "source_paths = src", "only_mutate ="]
    lines += [f"    src/i2moe/{name}" for name in CORE_FILES]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {path}" for path in test_paths(workdir)]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -k", f"    {SLOW_TESTS}",
              "process_isolation = forkserver", "use_git_change_detection = false", ""]
    (workdir / "setup.cfg").write_text("\n".join(lines))


def mutmut(workdir: Path, *names: str) -> None:
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(["nice", "-n", "10", sys.executable, "-m", "mutmut", "run", "--max-children", "1", *names],
                   cwd=workdir, env=env, check=False)


def mutant_results(workdir: Path) -> dict[str, int | None]:
    results = {}
    for meta in (workdir / "mutants" / "src").rglob("*.py.meta"):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def in_scope(name: str) -> bool:
    if ".modeling_i2moe." not in name:
        return True
    return any(part in name for part in MODELING_MATH)


STATUS = {0: "survived", 1: "killed", 3: "killed", 33: "no tests", 5: "no tests", 36: "timeout", 24: "timeout",
          -24: "timeout", 152: "timeout", 255: "timeout"}


def mutant_diff(workdir: Path, name: str) -> str:
    env = {**os.environ, "PYTHONPATH": ""}
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=workdir, env=env,
                           capture_output=True, text=True).stdout
    return "\n".join(line for line in shown.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---")))


def run_label(label: str, tests_ref: str | None, sample: int, seed: int, workdir: Path) -> dict:
    scratch_copy(workdir, tests_ref)
    write_mutmut_config(workdir)
    mutmut(workdir, "nothing-matches-this-name-*-generate-only")  # generates mutants, collects test stats
    names = sorted(name for name in mutant_results(workdir) if in_scope(name))
    chosen = sorted(random.Random(seed).sample(names, min(sample, len(names))))
    mutmut(workdir, *chosen)
    results = mutant_results(workdir)
    statuses = {name: STATUS.get(results.get(name), "suspicious") for name in chosen}
    per_file = {}
    for file in CORE_FILES:
        counts = Counter(status for name, status in statuses.items() if f".{file[:-3]}." in name)
        tested = counts["killed"] + counts["survived"] + counts["timeout"]
        per_file[file] = {**counts, "kill_rate": round((counts["killed"] + counts["timeout"]) / tested, 3) if tested else None}
    counts = Counter(statuses.values())
    tested = counts["killed"] + counts["survived"] + counts["timeout"]
    return {
        "tests": test_paths(workdir), "tests_ref": tests_ref or "working tree", "deselected": SLOW_TESTS,
        "mutants_in_scope": len(names), "sampled": len(chosen), "seed": seed, "counts": dict(counts),
        "kill_rate": round((counts["killed"] + counts["timeout"]) / tested, 3) if tested else None,
        "per_file": per_file,
        "survivors": {name: mutant_diff(workdir, name) for name, status in statuses.items() if status == "survived"},
    }


def run_planted(workdir: Path) -> list[dict]:
    rows = []
    for name, file, original, planted in PLANTED_BUGS:
        scratch_copy(workdir, None)
        path = workdir / "src" / "i2moe" / file
        source = path.read_text()
        if source.count(original) != 1:
            raise ValueError(f"planted bug {name!r}: the original text is not found exactly once in {file}")
        path.write_text(source.replace(original, planted))
        report = workdir / "report.xml"
        subprocess.run(
            ["nice", "-n", "10", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", SLOW_TESTS,
             f"--junitxml={report}", *test_paths(workdir)],
            cwd=workdir, env={**os.environ, "PYTHONPATH": str(workdir / "src")}, capture_output=True, text=True,
        )
        failed = sorted(set(re.findall(r'<testcase classname="tests\.(\w+)" name="([^"\[]+)[^"]*"[^>]*>\s*<(?:failure|error)',
                                       report.read_text())))
        rows.append({"bug": name, "file": file, "failing_tests": [f"{module}::{test}" for module, test in failed]})
        print(f"{name}: {len(failed)} failing tests", flush=True)
    return rows


def planted_table(stored: dict) -> str:
    """The Markdown table of docs/testing.md: each planted bug and the tests that catch it."""
    lines = ["| planted bug | file | failing tests |", "|---|---|---|"]
    for row in stored["planted_bugs"]:
        tests = ", ".join(f"`{test}`" for test in row["failing_tests"]) or "**none**"
        lines.append(f"| {row['bug']} | `{row['file']}` | {tests} |")
    return "\n".join(lines)


def summary_table(stored: dict) -> str:
    """Kill rates per run and per file, as quoted in docs/testing.md."""
    runs = stored["mutmut"]
    labels = [label for label in ("before", "after") if label in runs]
    lines = ["| file | " + " | ".join(f"{label}: killed / tested (rate)" for label in labels) + " |",
             "|---|" + "---|" * len(labels)]

    def cell(counts: dict) -> str:
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        tested = killed + counts.get("survived", 0)
        return f"{killed} / {tested} ({100 * killed / tested:.1f}%)" if tested else "—"

    for file in CORE_FILES:
        if all(file in runs[label]["per_file"] for label in labels):  # files added after a stored run are skipped
            lines.append(f"| `{file}` | " + " | ".join(cell(runs[label]["per_file"][file]) for label in labels) + " |")
    lines.append("| **all** | " + " | ".join(f"**{cell(runs[label]['counts'])}**" for label in labels) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after", help="key under which the results are stored")
    parser.add_argument("--tests-ref", default=None, help="take tests/ from this git ref (default: the working tree)")
    parser.add_argument("--sample", type=int, default=150, help="mutants tested (a seeded random sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--planted", action="store_true", help="run the named planted bugs instead of mutmut")
    parser.add_argument("--tables", action="store_true", help="print the Markdown tables of the stored results")
    args = parser.parse_args(argv)
    if args.tables:
        stored = json.loads(RESULTS.read_text())
        print(planted_table(stored), summary_table(stored), sep="\n\n")
        return
    workdir = args.workdir or Path("/tmp/i2moe-mutation") / ("planted" if args.planted else args.label)
    if args.planted:
        key, result = "planted_bugs", run_planted(workdir)
    else:
        key, result = args.label, run_label(args.label, args.tests_ref, args.sample, args.seed, workdir)
        print(f"{args.label}: kill rate {result['kill_rate']} over {result['sampled']} of {result['mutants_in_scope']} "
              f"mutants; counts {result['counts']}")
    # Read just before writing: several runs (labels, --planted) may go on at once.
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.planted:
        stored[key] = result
    else:
        stored.setdefault("mutmut", {})[key] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
