"""The figures README.md and docs/*.md quote, recomputed from the committed result files they come
from (benchmarks/results/*.json) and from the tests they describe: a regenerated JSON or a changed
test makes the stale sentence fail here, naming the file and the expected text."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

from test_distributed import STOCHASTIC, VARIANTS


ROOT = Path(__file__).resolve().parents[1]


def text(name: str) -> str:
    return (ROOT / name).read_text()


def results(name: str):
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def assert_quoted(document: str, *phrases: str) -> None:
    content = " ".join(text(document).split())  # line breaks in the Markdown are spaces
    missing = [phrase for phrase in phrases if " ".join(phrase.split()) not in content]
    assert not missing, f"{document} should quote {missing} (from the committed results)"


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x"


# --- I2MoE: operator counts and step time ---


def test_op_counts():
    counts = {(row["setting"], row["method"]): row for row in results("i2moe_op_count.json")}
    train_ratios, infer_ratios = set(), set()
    for setting in ("m2_d256_p16", "m3_d256_p16"):
        vanilla, i2moe, guided = (counts[(setting, method)] for method in ("vanilla", "i2moe", "i2moe_guided"))
        train, infer = ratio(i2moe["train_ops"], vanilla["train_ops"]), ratio(i2moe["infer_ops"], vanilla["infer_ops"])
        guided_train = ratio(guided["train_ops"], vanilla["train_ops"])
        train_ratios.add(train), infer_ratios.add(infer)
        assert_quoted("docs/i2moe.md", f"| {setting} | {vanilla['train_ops']} | {i2moe['train_ops']} | **{train}** | "
                                       f"{guided['train_ops']} | {guided_train} | "
                                       f"{vanilla['infer_ops']} | {i2moe['infer_ops']} | **{infer}** |")
        assert guided["infer_ops"] == i2moe["infer_ops"]
    (train,), (infer,) = train_ratios, infer_ratios  # M = 2 and M = 3 agree
    assert_quoted("README.md", f"dispatches {train} the ATen operators of vanilla fusion at M = 2 and M = 3 and "
                               f"inference {infer}")
    assert_quoted("docs/i2moe.md", f"the {train} operator count",
                  f"{guided['train_ops'] - i2moe['train_ops']} more kernels per training step",
                  f"({guided['train_ops']} against {i2moe['train_ops']} for the paper's objective at M = 2 and 3; "
                  f"vanilla fusion: {vanilla['train_ops']}, so {guided_train}")


def test_label_guided_step_time_sentence():
    """docs/i2moe.md's CPU step times of the default objective beside the paper's, from their one run."""
    rows = {(row["setting"], row["method"]): row for row in results("i2moe_step_time_guided_cpu.json")}
    cells = []
    for setting in ("m2_d256_p16", "m3_d256_p16"):
        guided, paper = rows[(setting, "i2moe_guided")], rows[(setting, "i2moe")]
        cells.append((guided["train_ms"], paper["train_ms"], ratio(guided["train_ms"], paper["train_ms"]),
                      abs(guided["infer_ms"] / paper["infer_ms"] - 1)))
    (g2, p2, r2, i2), (g3, p3, r3, i3) = cells
    assert_quoted("docs/i2moe.md", f"train step of {g2:.0f} ms with the default objective against {p2:.0f} ms with the "
                                   f"paper's at M = 2 ({r2}) and {g3:.0f} against {p3:.0f} ms at M = 3 ({r3})",
                  f"differ by {100 * i2:.0f}% and {100 * i3:.0f}%")


def step_times():
    return {(row["setting"], row["precision"], row["method"]): row for row in results("i2moe_step_time_cpu.json")}


def test_step_time_table():
    rows = step_times()
    for setting, precision, _ in sorted(rows):
        vanilla, i2moe = rows[(setting, precision, "vanilla")], rows[(setting, precision, "i2moe")]
        cells = [f"{i2moe[key]:.0f} / {vanilla[key]:.0f} {unit} = {i2moe[key] / vanilla[key]:.{digits}f}x"
                 for key, unit in (("train_ms", "ms"), ("infer_ms", "ms"), ("peak_mem_mib", "MiB"))
                 for digits in [1 if setting != "towers_vitb_bertb" else 2]]
        assert_quoted("docs/i2moe.md", f"| {setting} | {precision} | {i2moe['batch_size']} | {i2moe['steps']} | "
                                       + " | ".join(cells) + " |")


def test_bf16_against_fp32_on_this_cpu():
    rows = step_times()
    bf16_over_fp32 = {
        (setting, method): rows[(setting, "bf16", method)]["train_ms"] / rows[(setting, "fp32", method)]["train_ms"]
        for setting, precision, method in rows if precision == "fp32"
    }
    small = {bf16_over_fp32[(setting, "i2moe")] for setting in ("m2_d256_p16", "m3_d256_p16")}
    assert {f"{value:.2f}" for value in small} == {"0.52"}
    large = [value for (setting, _), value in bf16_over_fp32.items() if not setting.endswith("d256_p16")]
    assert_quoted("docs/i2moe.md", "I2MoE train step 0.52x the fp32 time at M = 2 and M = 3",
                  f"but {min(large):.1f}–{max(large):.1f}x slower at d = 768 and with the towers")


def synthetic_row(runs: list[dict], expected: str) -> dict:
    return {
        "dominant": sum(run["dominant_type"] == expected for run in runs),
        "learned": sum(run["accuracy"] >= 0.9 for run in runs),
        "accuracy": statistics.mean(run["accuracy"] for run in runs),
        "best_expert": statistics.mean(max(run["component_accuracy"].values()) for run in runs),
        "largest_weight": statistics.mean(run["mean_max_weight"] for run in runs),
    }


@pytest.mark.parametrize("task, label, expected", [("uniqueness", "sign of `a[0]`", "uniqueness_a"),
                                                   ("synergy", "XOR", "synergy")])
def test_synthetic_interactions_table(task, label, expected):
    runs = results("i2moe_synthetic_interactions.json")
    lines = [line for line in text("docs/i2moe.md").splitlines() if line.startswith(f"| {label}")]
    perturbations = ("noise", "mean", "null")
    rows = {(p, lam): synthetic_row([run for run in runs if (run["task"], run["perturbation"], run["lambda_int"])
                                     == (task, p, lam)], expected)
            for p in perturbations for lam in (0.5, 2.0)}
    for p in perturbations:
        row = rows[(p, 0.5)]
        cells = (f"| {p} | 0.5 | {row['dominant']} / 5 | {row['learned']} / 5 | {row['accuracy']:.3f} | "
                 f"{row['best_expert']:.3f} | "
                 f"{row['largest_weight']:.2f} |")
        assert any(line.endswith(cells) for line in lines), f"docs/i2moe.md: no {label} row ending {cells}"
    large = [rows[(p, 2.0)] for p in perturbations]

    def spread(key, digits):
        low, high = min(row[key] for row in large), max(row[key] for row in large)
        return f"{low:.{digits}f}–{high:.{digits}f}"

    dominant = ", ".join(f"{row['dominant']} / 5" for row in large)
    learned = ", ".join(f"{row['learned']} / 5" for row in large)
    cells = (f"| noise / mean / null | 2.0 | {dominant} | {learned} | "
             f"{spread('accuracy', 2)} | {spread('best_expert', 2)} | {spread('largest_weight', 2)} |")
    assert any(line.endswith(cells) for line in lines), f"docs/i2moe.md: no {label} row ending {cells}"


def test_synergy_expert_dominance_and_xor_learning_sentences():
    xor = [run for run in results("i2moe_synthetic_interactions.json") if run["task"] == "synergy"]
    synergy_runs = [run for run in xor if run["dominant_type"] == "synergy"]
    failed = [run["accuracy"] for run in synergy_runs if run["accuracy"] < 0.9]
    learned = [run for run in synergy_runs if run["accuracy"] >= 0.9]
    assert {run["perturbation"] for run in learned} == {"null"}
    alone = [run["component_accuracy"]["synergy"] for run in learned]
    assert_quoted("docs/i2moe.md", f"largest mean weight in {len(synergy_runs)} of {len(xor)} runs: {len(failed)} where",
                  f"(accuracy {min(failed):.2f} to {max(failed):.2f}) and {len(learned)} with the null perturbation",
                  f"at chance alone ({min(alone):.2f}–{max(alone):.2f})")
    standard = [run for run in xor if run["lambda_int"] == 0.5]
    learned = [run for run in standard if run["accuracy"] >= 0.9]
    best = sorted(max(run["component_accuracy"].values()) for run in learned)
    partial = [value for value in best if 0.6 < value < 0.9]
    assert_quoted("docs/i2moe.md", f"learns the label in {len(learned)} of {len(standard)} runs",
                  f"in {sum(value <= 0.52 for value in best)} of those {len(learned)} no",
                  f"in {len(partial)} one reaches {min(partial):.2f}–{max(partial):.2f}",
                  f"XOR alone ({best[-1]:.2f})")


def test_xor_sentences_of_the_label_guided_section():
    """docs/i2moe.md's XOR counts for the default objective beside the paper's, from the committed runs:
    runs that learned XOR, seeds where the synergy expert learns it alone, where it is dominant."""
    guided = [run for run in results("i2moe_synthetic_guided.json")
              if run["task"] == "synergy" and run["label_guidance_weight"] == 3.0]
    paper = [run for run in results("i2moe_synthetic_interactions.json")
             if run["task"] == "synergy" and run["lambda_int"] == 0.5]
    fast = results("i2moe_synthetic_guided_lr1e-2.json")

    def alone(runs, perturbation=None):
        return sum(run["component_accuracy"]["synergy"] >= 0.9 for run in runs
                   if perturbation in (None, run["perturbation"]))

    per_perturbation = [alone(guided, p) for p in ("noise", "mean", "null")]
    paper_per_perturbation = [alone(paper, p) for p in ("noise", "mean", "null")]
    learned = lambda runs: sum(run["accuracy"] >= 0.9 for run in runs)  # noqa: E731
    fast_guided = [run for run in fast if run["label_guidance_weight"] == 3.0]
    fast_paper = [run for run in fast if run["label_guidance_weight"] == 0.0]
    assert_quoted("docs/i2moe.md",
                  f"it does on {per_perturbation[0]}, {per_perturbation[1]} and {per_perturbation[2]} of 5 seeds",
                  f"paper's objective: {paper_per_perturbation[0]}, {paper_per_perturbation[1]} and {paper_per_perturbation[2]})",
                  f"XOR learned on {learned(guided)} of 15 runs against {learned(paper)} of 15",
                  f"at Adam lr 1e-2: {alone(fast_guided)} of 5 seeds",
                  f"synergy the dominant weight on {sum(run['dominant_type'] == 'synergy' for run in fast_guided)} of 5",
                  f"the synergy expert alone at 0.98 on {sum(run['component_accuracy']['synergy'] >= 0.975 for run in fast_paper)} "
                  f"of 5, dominant on {['none', 'one', 'two'][sum(run['dominant_type'] == 'synergy' for run in fast_paper)]}")


# --- AV-MNIST: I2M2 and DMIL ---


def avmnist_rows() -> dict:
    return {(row["model"], row["fusion"]): row for row in results("avmnist.json")}


def test_avmnist_table_and_readme():
    for row in results("avmnist.json"):
        per_seed = " / ".join(f"{value:.2f}" for value in row["accuracies"])
        seeds = ", ".join(map(str, row["seeds"]))
        assert_quoted("docs/i2m2.md", f"| {row['model']} | {row['fusion'] or '—'} | {row['accuracy_mean']:.2f} ± "
                                      f"{row['accuracy_std']:.2f} | {per_seed} (seeds {seeds}) |")
    rows = avmnist_rows()
    mean = {key: row["accuracy_mean"] for key, row in rows.items()}
    assert_quoted(
        "README.md",
        f"image-only {mean[('image-only', None)]:.1f}, audio-only {mean[('audio-only', None)]:.1f})",
        f"intra {mean[('intra (product of unimodal)', None)]:.2f}, inter LF {mean[('inter', 'LF')]:.2f}, "
        f"**I2M2 LF {mean[('I2M2', 'LF')]:.2f}**, I2M2 LRTF {mean[('I2M2', 'LRTF')]:.2f}, "
        f"I2MoE {mean[('I2MoE', 'LF')]:.2f}",
    )


def test_avmnist_per_seed_margins_over_intra():
    rows = avmnist_rows()
    intra = rows[("intra (product of unimodal)", None)]["accuracies"]

    def margins(key):
        return ", ".join(f"{value - base:+.2f}" for value, base in zip(rows[key]["accuracies"], intra))

    assert_quoted("docs/i2m2.md", f"({margins(('I2M2', 'LF'))} points)", f"({margins(('I2M2', 'LRTF'))})",
                  f"({rows[('intra (product of unimodal)', None)]['accuracy_mean']:.2f}; "
                  f"{margins(('I2MoE + I2M2 heads', 'LF'))} per seed)")


def dmil_cell(row: dict, with_synergy: bool = True) -> str:
    cell = f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}"
    return f"{cell} (syn {100 * row['synergy_mean']:.2f})" if with_synergy else cell


def test_dmil_table_and_readme():
    rows = {(row["dataset"], row["model"]): row for row in results("dmil.json")["rows"]}
    for model, label in (("joint", "Joint training"), ("unimodal_ensemble", "Unimodal ensemble"), ("dmil", "DMIL")):
        assert_quoted("docs/dmil.md", f"| {label} | ")
        assert_quoted("docs/dmil.md", f"| {dmil_cell(rows[('avmnist', model)])} | {dmil_cell(rows[('fashion', model)])} |")
    assert_quoted("docs/dmil.md",
                  f"| image / text alone | — | {dmil_cell(rows[('avmnist', 'unimodal_image')], False)} | "
                  f"{dmil_cell(rows[('fashion', 'unimodal_text')], False)} (text) |",
                  f"| audio / tabular alone | — | {dmil_cell(rows[('avmnist', 'unimodal_audio')], False)} | "
                  f"{dmil_cell(rows[('fashion', 'unimodal_tabular')], False)} (tabular) |")
    gates = {dataset: rows[(dataset, "dmil")]["gate_weights_mean"] for dataset in ("avmnist", "fashion")}
    assert_quoted("docs/dmil.md", ", ".join(
        f"{name.replace('_', ' ')} {gates['avmnist'][name]:.2f}"
        for name in ("uniqueness_image", "uniqueness_audio", "redundancy", "synergy")))
    assert_quoted("docs/dmil.md", ", ".join(
        f"{name.replace('_', ' ')} {gates['fashion'][name]:.2f}"
        for name in ("uniqueness_tabular", "uniqueness_text", "redundancy", "synergy")))
    accuracy = {model: 100 * rows[("avmnist", model)]["accuracy_mean"] for model in ("dmil", "joint", "unimodal_ensemble")}
    assert_quoted("README.md", f"{accuracy['dmil']:.2f} / {accuracy['joint']:.2f} / {accuracy['unimodal_ensemble']:.2f}")
    short = {row["model"]: row for row in results("dmil_avmnist_stages_2_2_2.json")["rows"]}
    assert_quoted("docs/dmil.md", dmil_cell(short["dmil"], False))


def stage_range(name: str, stage: int) -> str:
    stages = [row["validation_accuracy_per_stage"][stage] for row in results(name)["per_seed"]
              if (row["dataset"], row["model"]) == ("avmnist", "dmil")]
    return f"{100 * min(stages):.0f}-{100 * max(stages):.0f}%"


def test_dmil_per_stage_validation_accuracy():
    dmil = {row["model"]: row for row in results("dmil.json")["rows"] if row["dataset"] == "avmnist"}["dmil"]
    assert_quoted("docs/dmil.md", f"ensemble reaches {stage_range('dmil.json', 0)}",
                  f"falls to {stage_range('dmil.json', 1)}",
                  f"stage 2 still ends at {stage_range('dmil_avmnist_stages_2_2_2.json', 1)}",
                  f"synergy score ({100 * dmil['synergy_mean']:.1f}%)")


# --- what the tests check, as the docs describe it ---


def test_distributed_variant_counts():
    # Every variant, the stochastic ones included, is compared across process counts (no skip).
    assert STOCHASTIC and "pytest.skip" not in (Path(__file__).parent / "test_distributed.py").read_text()
    assert_quoted("README.md", f"every method\n  and variant ({len(VARIANTS)} of {len(VARIANTS)}, `tests/test_distributed.py`)")
    assert_quoted("docs/distributed.md", f"({len(VARIANTS)} variants)", "for **every** variant, the stochastic ones included")


# --- the mutation-testing note ---


def load_script(path: Path):
    """A script of the repository (not a package module) imported from its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mutation_tool():
    return load_script(ROOT / "tools" / "mutation_testing.py")


def test_mutation_testing_note_quotes_its_results():
    tool, stored = mutation_tool(), results("mutation_testing.json")
    assert all(row["failing_tests"] for row in stored["planted_bugs"]), "a planted bug is caught by no test"
    assert {row["bug"] for row in stored["planted_bugs"]} == {bug[0] for bug in tool.PLANTED_BUGS}
    document = text("docs/testing.md")
    for table in (tool.planted_table(stored), tool.summary_table(stored)):
        assert table in document, f"docs/testing.md should hold, from the results:\n{table}"
    runs = stored["mutmut"]
    assert runs["before"]["sampled"] == runs["after"]["sampled"]  # the same seeded sample in both runs
    assert_quoted("docs/testing.md", f"The {runs['after']['sampled']} sampled mutants of the "
                                     f"{runs['after']['mutants_in_scope']:,} in scope")
    unexplained = [name for name in stored["mutmut"]["after"]["survivors"] if f"`{name}`" not in document]
    assert not unexplained, f"docs/testing.md must justify the surviving mutants {unexplained}"


def test_interpretation_tables_are_the_stored_attribution_runs(monkeypatch):
    """docs/interpretation.md's planted-attribution tables are what `attribution_planted.py --markdown`
    makes of the committed JSON: a rerun committed without the page (or the page edited by hand) fails."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # for the benchmarks' shared modules
    tool = load_script(ROOT / "benchmarks" / "attribution_planted.py")
    stored = json.loads((ROOT / "benchmarks" / "results" / "attribution_planted.json").read_text())
    page = text("docs/interpretation.md")
    block = page.split("<!-- ATTRIBUTION_PLANTED_TABLES -->\n", 1)[1].split("\n<!-- /ATTRIBUTION_PLANTED_TABLES -->", 1)[0]
    assert block == tool.markdown_tables(stored), "docs/interpretation.md: paste `attribution_planted.py --markdown`"


def test_normalized_uniqueness_attribution_sentence():
    """docs/i2moe.md's planted comparison of the two uniqueness distances, from their committed runs."""
    rows = results("attribution_planted_normuni.json")["rows"]

    def named(method: str) -> int:
        return sum(row["weights_dominant"] == row["kind"] for row in rows if row["method"] == method and row["kind"] != "mixture")

    def auroc(method: str, kind: str) -> str:
        return " / ".join(f"{row['weights_auroc'][kind]:.2f}" for row in rows if row["method"] == method and row["kind"] == "mixture")

    assert_quoted("docs/i2moe.md", f"name the planted type on {named('i2moe_normuni')} of 8 single-type datasets "
                                   f"(the paper's distance: {named('i2moe')} of 8)",
                  f"`uniqueness_a` {auroc('i2moe_normuni', 'uniqueness_a')} (the paper's: {auroc('i2moe', 'uniqueness_a')})",
                  f"`uniqueness_b` {auroc('i2moe_normuni', 'uniqueness_b')} ({auroc('i2moe', 'uniqueness_b')})")


def test_label_guidance_attribution_sentence():
    """docs/i2moe.md's planted comparison of the paper's losses and the label-guided ones, from their runs."""
    rows = results("attribution_planted_guided.json")["rows"]

    def named(method: str, rows=rows) -> int:
        return sum(row["weights_dominant"] == row["kind"] for row in rows if row["method"] == method and row["kind"] != "mixture")

    def ranges(method: str, rows=rows) -> str:
        cells = []
        for kind in ("uniqueness_a", "uniqueness_b", "redundancy", "synergy"):
            values = [row["weights_auroc"][kind] for row in rows if row["method"] == method and row["kind"] == "mixture"]
            low, high = f"{min(values):.2f}", f"{max(values):.2f}"
            cells.append(low if low == high else f"{low}-{high}")
        return " / ".join(cells)

    weight_one = results("attribution_planted_guided1.json")["rows"]
    assert_quoted("docs/i2moe.md", f"same seeds) the weights name it on {named('i2moe_guided1', weight_one)} of 16, the mixture's "
                                   f"AUROC is {ranges('i2moe_guided1', weight_one)} and")
    synergy = [row["weights_mean"]["synergy"] for row in rows if row["kind"] == "synergy" and row["method"] == "i2moe"]
    assert all(row["weights_mean"]["synergy"] == 1.0 for row in rows if row["kind"] == "synergy" and row["method"] == "i2moe_guided")
    assert_quoted("README.md", f"name it on {named('i2moe_guided')} of 16 single-type planted datasets",
                  f"the paper's losses: {named('i2moe')} of 16)")
    assert_quoted("docs/interpretation.md", f"on {named('i2moe_guided')} of 16 single-type datasets (the paper's losses: "
                                            f"{named('i2moe')} of 16)", f"AUROC is {ranges('i2moe_guided')} for U_a")
    assert_quoted("docs/i2moe.md", f"{named('i2moe_guided')} of 16 single-type datasets (the paper's losses: {named('i2moe')} of 16)",
                  f"with weight 1.00 (the paper's: ≤ {max(synergy):.2f})",
                  f"is {ranges('i2moe_guided')} (the paper's losses: {ranges('i2moe')};")


# --- issue 14's results suite ---


def test_label_guidance_results_sentences():
    """docs/results.md's and docs/i2moe.md's figures for the label-guided rows, from the committed result lines:
    medians, "k of n" counts and paired mean gaps ± their standard error."""
    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "results" / "methods_suite.jsonl").read_text().splitlines()]
    avmnist = "10000rows-15ep-adamw0.001-bs64-audiopool2"
    demo, linear = "all-rows-20ep-adamw0.002-bs128-towercalls16-demo", "all-rows-20ep-adamw0.002-bs128-towercalls16"

    def by_seed(suite: str, budget: str, method: str) -> dict:
        return {row["seed"]: row["test_accuracy"] for row in rows
                if (row["suite"], row["budget"], row["method"]) == (suite, budget, method)}

    def paired(method: str, baseline: str) -> str:
        ours, theirs = by_seed("avmnist", avmnist, method), by_seed("avmnist", avmnist, baseline)
        gaps = [100 * (ours[seed] - theirs[seed]) for seed in sorted(ours)]
        error = statistics.stdev(gaps) / len(gaps) ** 0.5
        return (f"{statistics.mean(gaps):+.2f} ± {error:.2f}".replace("-", "−"),  # the docs' minus sign
                f"{sum(gap >= 0 for gap in gaps)} of {len(gaps)}")

    def fashion(budget: str, method: str) -> str:
        ours, image, text = (by_seed("fashion", budget, name) for name in (method, "image", "text"))
        met = sum(ours[seed] >= max(image[seed], text[seed]) for seed in ours)
        return f"{100 * statistics.median(ours.values()):.2f}", f"{met} of {len(ours)}"

    lf, lf_paper = paired("i2moe_guided_lf", "vanilla_lf"), paired("i2moe_guided_lf", "i2moe_lf")
    lf_sentence = f"LF {lf[0]} ({lf[1]}; {lf_paper[0]} above the paper's losses, {lf_paper[1]})"
    one, one_paper = paired("i2moe_guided1_lf", "vanilla_lf"), paired("i2moe_guided1_lf", "i2moe_lf")
    assert_quoted("docs/results.md", f"LF with weight 1 {one[0]} ({one[1]}; {one_paper[0]} above the paper's losses, {one_paper[1]})")
    assert_quoted("docs/i2moe.md", f"LF with weight 1 instead of 3 {one[0]} from LF fusion ({one[1]}; {one_paper[0]} above "
                                   f"the paper's losses, {one_paper[1]})")
    for fusion, name in (("transformer", "transformer"), ("lrtf", "LRTF")):
        gap, gap_paper = paired(f"i2moe_guided_{fusion}", f"vanilla_{fusion}"), paired(f"i2moe_guided_{fusion}", f"i2moe_{fusion}")
        sentence = f"{name} {gap[0]} ({gap[1]}; {gap_paper[0]} above the paper's losses, {gap_paper[1]})"
        assert_quoted("docs/results.md", sentence)
        assert_quoted("docs/i2moe.md", f"{name} experts {gap[0]} from {name} fusion ({gap[1]}; {gap_paper[0]} above the "
                                       f"paper's losses, {gap_paper[1]})")
    xl, guided_over_xl = paired("i2moe_xl_lrtf", "vanilla_lrtf"), paired("i2moe_guided_lrtf", "i2moe_xl_lrtf")
    assert_quoted("docs/results.md", f"every expert's own clean cross-entropy at weight 1, eight seeds) is {xl[0]} from "
                                     f"LRTF ({xl[1]}), and the guided mixture {guided_over_xl[0]} above it ({guided_over_xl[1]})")
    (median_demo, met_demo), (median_linear, met_linear) = fashion(demo, "i2moe_guided"), fashion(linear, "i2moe_guided")
    median_one, met_one = fashion(demo, "i2moe_guided1")
    assert_quoted("docs/results.md", lf_sentence,
                  f"{median_demo} (`i2moe_guided`, {met_demo}", f"{median_linear} and {met_linear} with `linear-best`",
                  f"`i2moe_guided1`: {median_one}, {met_one})")
    def worst_planted_gap(suite: str, excluded: tuple[str, ...] = ()) -> str:
        accuracy = {(row["kind"], row["method"], row["seed"]): row["test_accuracy"] for row in rows if row["suite"] == suite}
        gaps = [100 * (value - accuracy[(kind, "vanilla", seed)]) for (kind, method, seed), value in accuracy.items()
                if method == "i2moe_guided" and kind not in excluded]
        return f"{min(gaps):+.2f}".replace("-", "−")

    assert_quoted("docs/results.md", f"`i2moe_guided`, {worst_planted_gap('planted2')} on 2 modalities and "
                                     f"{worst_planted_gap('planted3', ('synergy_all',))} on the 3-modality kinds the baseline learns")
    assert_quoted("docs/i2moe.md", f"{met_demo} seeds (median {median_demo}", f"recipe {met_linear} (median {median_linear}",
                  f"LF {lf[0]} points from LF fusion (at or above it on {lf[1]}; {lf_paper[0]} above the paper's losses, "
                  f"{lf_paper[1]})")


def test_label_guidance_expert_ranges():
    """docs/i2moe.md's ranges of the label-guided experts' own accuracies and weights on AV-MNIST LF."""
    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "results" / "methods_suite.jsonl").read_text().splitlines()]
    guided = [row for row in rows if row["method"] == "i2moe_guided_lf"
              and row["budget"] == "10000rows-15ep-adamw0.001-bs64-audiopool2"]

    def percent_range(key: str, component: str) -> str:
        values = [row[key][component] for row in guided]
        return f"{100 * min(values):.0f}-{100 * max(values):.0f}"

    weights = [row["mean_weight"]["redundancy"] for row in guided]
    assert len(guided) == 8
    others = [row for row in rows if row["method"] in ("i2moe_guided_transformer", "i2moe_guided_lrtf")
              and row["budget"] == "10000rows-15ep-adamw0.001-bs64-audiopool2"]
    assert len(others) == 16

    def others_range(component: str) -> str:
        values = [row["component_accuracy"][component] for row in others]
        return f"{100 * min(values):.0f}-{100 * max(values):.0f}%"

    unimodal = [row["component_accuracy"][name] for row in others for name in ("uniqueness_image", "uniqueness_audio")]
    synergy_weights = [row["mean_weight"]["synergy"] for row in others]
    assert_quoted("docs/i2moe.md", f"it puts {min(synergy_weights):.2f}-{max(synergy_weights):.2f} on synergy instead",
                  f"({100 * min(unimodal):.0f}-{100 * max(unimodal):.0f}% alone)",
                  f"(the redundancy expert {others_range('redundancy')} alone, synergy {others_range('synergy')})")
    assert_quoted("docs/i2moe.md", f"(image {percent_range('component_accuracy', 'uniqueness_image')}% alone, "
                                   f"audio {percent_range('component_accuracy', 'uniqueness_audio')}%",
                  f"full classifier ({percent_range('component_accuracy', 'synergy')}% alone, every seed)",
                  f"puts {min(weights):.2f}-{max(weights):.2f} of the weight on redundancy")


def test_results_tables_are_the_suites_output(tmp_path, monkeypatch):
    """docs/results.md's generated tables are what its own `--write_docs` command makes of the committed
    result lines: a result line added or changed without regenerating the page fails here."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # for the benchmarks' shared modules
    suite = load_script(ROOT / "benchmarks" / "methods_suite.py")
    page = text("docs/results.md")
    command = page.split("methods_suite.py --acceptance", 1)[1].split("--write_docs", 1)[0].replace("\\", " ")
    copy = tmp_path / "results.md"
    copy.write_text(page)
    suite.write_docs(copy, suite.acceptance_budgets(command.split()))
    assert copy.read_text() == page, "docs/results.md: regenerate its tables with the command at its top"


def test_demo_seed_sentences():
    """README's and docs/demo.md's demo accuracy over seeds: the committed `demo_seeds.py` rows of
    the current objective (config format version 3)."""
    rows = [row for row in results("demo_seeds.json") if row.get("i2moe_format_version") == 3]
    seeds = sorted(row["seed"] for row in rows)
    accuracy = [row["test_accuracy"] for row in rows]
    assert seeds == list(range(seeds[0], seeds[-1] + 1))
    sentence = (f"at seeds {seeds[0]}-{seeds[-1]} the same training gives {min(accuracy):.4f}-{max(accuracy):.4f} "
                f"test accuracy (median {statistics.median(accuracy):.4f}")
    assert_quoted("README.md", sentence)
    assert_quoted("docs/demo.md", sentence)


def test_readme_quotes_the_suites_medians():
    """README's converged-budget rows: the medians over seeds of the committed result lines."""
    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "results" / "methods_suite.jsonl").read_text().splitlines()]

    def med(suite: str, budget: str, method: str) -> str:
        values = [row["test_accuracy"] for row in rows if (row["suite"], row["budget"], row["method"]) == (suite, budget, method)]
        return f"{100 * statistics.median(values):.2f}"

    avmnist = lambda method: med("avmnist", "10000rows-15ep-adamw0.001-bs64-audiopool2", method)
    fashion = lambda method: med("fashion", "all-rows-20ep-adamw0.002-bs128-towercalls16-demo", method)
    assert_quoted(
        "README.md",
        f"vanilla LF {avmnist('vanilla_lf')}, I2MoE LF (its defaults: the label-guided interaction losses) "
        f"{avmnist('i2moe_guided_lf')} (above on 4 of 8 seeds; with the paper's objective {avmnist('i2moe_lf')}, 2 of 8",
        f"`i2moe.uniqueness_distance=\"normalized\"` {avmnist('i2moe_normuni_lf')}, 5 of 8",
        f"vanilla LRTF {avmnist('vanilla_lrtf')}, I2MoE LRTF {avmnist('i2moe_guided_lrtf')} (7 of 8; the paper's "
        f"objective {avmnist('i2moe_lrtf')}, 4 of 8)",
        f"vanilla transformer {avmnist('vanilla_transformer')}, I2MoE transformer {avmnist('i2moe_guided_transformer')} "
        f"(3 of 8; the paper's objective {avmnist('i2moe_transformer')}, 3 of 8)",
        f"DMIL (its defaults) {avmnist('dmil_fused')} (above joint and ensemble",
        f"with the paper's stage-3 weights {avmnist('dmil')}, 7 of 8",
        f"LF {avmnist('i2m2_product_lf')} / LRTF {avmnist('i2m2_product_lrtf')}",
        f"intra {avmnist('intra')}; ensemble {avmnist('ensemble')}",
        f"image alone {fashion('image')}, text alone {fashion('text')}, vanilla {fashion('vanilla')}, "
        f"**I2MoE (its defaults) {fashion('i2moe_guided')}** (above text-only on 10 of 10 seeds",
        f"I2MoE with the paper's objective {fashion('i2moe')}, **I2M2 {fashion('i2m2')}**",
        f"DMIL (its defaults) {fashion('dmil_fused')} (9 of 10; with the paper's stage-3 weights {fashion('dmil')}, 4 of 10)",
    )
