"""The interpretation API (sample and dataset level, JSON/CSV) and its plots."""

from __future__ import annotations

import builtins
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_config
from i2moe import I2MoEForClassification
from i2moe.interpretation import InterpretationResult, interpret


LABELS = {0: "cat", 1: "dog", 2: "bird"}


@pytest.fixture
def model():
    config = make_config("concat", method="i2moe", id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    return I2MoEForClassification(config)


def make_data(count=10):
    generator = torch.Generator().manual_seed(0)
    return [{"m0_features": torch.randn(8, generator=generator), "m1_features": torch.randn(4, generator=generator),
             "labels": index % 3} for index in range(count)]


def test_interpret_collects_sample_level_outputs(model):
    data = make_data()
    result = interpret(model, data, batch_size=4, progress=True)
    assert model.training  # the mode is restored
    assert result.component_names == ["uniqueness_m0", "uniqueness_m1", "redundancy", "synergy"]
    assert result.weights.shape == (10, 4) and result.component_logits.shape == (10, 4, 3)
    np.testing.assert_allclose(result.weights.sum(1), 1.0, rtol=1e-5)
    # Contributions w_k * y_k add up to the model's logits.
    np.testing.assert_allclose(result.contributions.sum(1), result.logits, rtol=1e-4, atol=1e-6)
    model.eval()
    with torch.no_grad():
        direct = model(m0_features=torch.stack([d["m0_features"] for d in data]),
                       m1_features=torch.stack([d["m1_features"] for d in data]))
    np.testing.assert_allclose(result.weights, direct.component_weights.numpy(), rtol=1e-5)
    record = result.samples()[1]
    assert record["label"] == "dog" and set(record["weights"]) == set(result.component_names)
    assert set(record["contributions"]["synergy"]) == {"cat", "dog", "bird"}


def test_dataloader_and_hf_dataset_inputs_agree(model):
    datasets = pytest.importorskip("datasets")
    data = make_data(7)
    from_list = interpret(model, data, batch_size=3, progress=False)
    from_loader = interpret(model, DataLoader(data, batch_size=5), progress=False)
    columns = {key: [row[key].tolist() if isinstance(row[key], torch.Tensor) else row[key] for row in data]
               for key in data[0]}
    dataset = datasets.Dataset.from_dict(columns).with_format("torch")
    from_dataset = interpret(model, dataset, batch_size=2, progress=False)
    for other in (from_loader, from_dataset):
        np.testing.assert_allclose(other.weights, from_list.weights, rtol=1e-5)
        np.testing.assert_array_equal(other.labels, from_list.labels)


def _result(weights, labels):
    weights = np.asarray(weights, dtype=float)
    logits = np.zeros((len(weights), len(weights[0]), 2))
    return InterpretationResult(["uniqueness_a", "uniqueness_b", "synergy", "redundancy"], weights, logits,
                                logits.sum(1), None if labels is None else np.asarray(labels), ["no", "yes"])


def test_summary_overall_and_per_class():
    result = _result([[0.7, 0.1, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.6, 0.2], [0.2, 0.1, 0.3, 0.4]],
                     labels=[0, 0, 1, 1])
    summary = result.summary()
    assert summary["overall"]["mean_weight"]["uniqueness_a"] == pytest.approx(0.375)
    assert summary["dominant_type"] == "uniqueness_a"
    assert summary["dominant_type_per_class"] == {"no": "uniqueness_a", "yes": "synergy"}
    assert summary["per_class"]["yes"]["share_dominant"] == {"uniqueness_a": 0.0, "uniqueness_b": 0.0,
                                                             "synergy": 0.5, "redundancy": 0.5}
    assert summary["overall"]["quantiles"]["synergy"][2] == pytest.approx(0.2)  # the median
    assert summary["per_class"]["no"]["std_weight"]["uniqueness_a"] == pytest.approx(0.1)
    # Without labels there is no grouping by label, but predictions still group.
    unlabeled = _result(result.weights, labels=None)
    assert unlabeled.summary()["per_class"] == {}
    assert unlabeled.summary(by="prediction")["grouped_by"] == "prediction"
    with pytest.raises(ValueError, match="`by`"):
        result.summary(by="cluster")


def test_summary_reports_each_component_accuracy_beside_the_model():
    """A routing mixture: the weights pick, per sample, the one component that is right there, so
    the model is always right while each component alone is right half the time."""
    labels = np.array([0, 1, 1, 0])
    component_logits = np.zeros((4, 4, 2))
    component_logits[:, 0] = [[1, 0], [0, 1], [1, 0], [0, 1]]  # right on samples 0 and 1
    component_logits[:, 1] = [[0, 1], [1, 0], [0, 1], [1, 0]]  # right on samples 2 and 3
    weights = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 0]])
    logits = (weights[:, :, None] * component_logits).sum(1)
    result = InterpretationResult(["uniqueness_a", "uniqueness_b", "synergy", "redundancy"], weights,
                                  component_logits, logits, labels, ["no", "yes"])
    summary = result.summary()
    assert summary["accuracy"] == 1.0
    assert summary["component_accuracy"] == {"uniqueness_a": 0.5, "uniqueness_b": 0.5, "synergy": 0.5,
                                             "redundancy": 0.5}  # zero logits: argmax is class 0
    # Regression or multi-label targets have no accuracy to report.
    multi_hot = InterpretationResult(result.component_names, weights, component_logits, logits,
                                     np.eye(2)[labels], ["no", "yes"])
    assert "component_accuracy" not in multi_hot.summary()


def test_json_and_csv_exports(model, tmp_path):
    result = interpret(model, make_data(), batch_size=4, progress=False)
    result.to_json(tmp_path / "interp.json")
    loaded = json.loads((tmp_path / "interp.json").read_text())
    assert loaded["summary"]["dominant_type"] in result.component_names
    assert len(loaded["samples"]) == 10
    result.to_csv(tmp_path / "interp.csv")
    with open(tmp_path / "interp.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and rows[0]["label"] == "cat"
    synergy, redundancy = result.component_names.index("synergy"), result.component_names.index("redundancy")
    assert float(rows[3]["weight_synergy"]) == pytest.approx(result.weights[3, synergy], rel=1e-6)
    assert float(rows[3]["contribution_redundancy_dog"]) == pytest.approx(result.contributions[3, redundancy, 1], rel=1e-5)


class _GateModel(torch.nn.Module):
    """A stand-in for DMIL: outputs `component_weights`/`component_logits` and names its components."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 3 * 2)
        self.interaction = SimpleNamespace(component_names=["uniqueness_x", "redundancy", "synergy"])
        self.config = SimpleNamespace(id2label={0: "a", 1: "b"})

    def forward(self, x):
        component_logits = self.linear(x).view(-1, 3, 2)
        gate = torch.softmax(component_logits.sum(-1), -1)
        return SimpleNamespace(component_weights=gate, component_logits=component_logits,
                               logits=(gate[..., None] * component_logits).sum(1))


def test_reads_component_weights_when_there_are_no_component_weights():
    result = interpret(_GateModel(), [{"x": torch.randn(2)} for _ in range(5)], batch_size=2, progress=False)
    assert result.component_names == ["uniqueness_x", "redundancy", "synergy"]
    assert result.labels is None and result.weights.shape == (5, 3)


def test_vanilla_model_is_refused_with_a_clear_error():
    model = I2MoEForClassification(make_config("concat"))
    with pytest.raises(ValueError, match="method='i2moe'"):
        interpret(model, make_data(2), progress=False)


def test_plots_write_readable_figures(model, tmp_path):
    pytest.importorskip("matplotlib")
    from i2moe.plots import plot_sample_contributions, plot_weight_distributions

    result = interpret(model, make_data(12), batch_size=4, progress=False)
    figure = plot_weight_distributions(result, path=tmp_path / "weights.png")
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == [
        "uniqueness\nm0", "uniqueness\nm1", "redundancy", "synergy"]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["mean weight", "uniform mix (1/4)"]
    assert figure.axes[0].get_ylim() == (-0.02, 1.02)  # weights on their full scale, comparable across panels
    per_class = plot_weight_distributions(result, by_class=True, max_classes=2, path=tmp_path / "per_class.png")
    assert sum(axis.get_visible() for axis in per_class.axes) == 2
    assert per_class.get_suptitle().endswith("the 2 most frequent of 3 classes")
    bars = plot_sample_contributions(result, indices=[0, 3, 5], path=tmp_path / "samples.png")
    legend = [text.get_text() for text in bars.axes[0].get_legend().get_texts()]
    assert legend == ["logit (sum)", "uniqueness m0", "uniqueness m1", "redundancy", "synergy"]
    assert all(tick.get_rotation() == 40 for tick in bars.axes[0].get_xticklabels())  # long class names stay apart
    for name in ("weights.png", "per_class.png", "samples.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="class_index"):
        plot_sample_contributions(result, class_index=7)


def test_plots_name_the_extra_when_matplotlib_is_missing(monkeypatch):
    from i2moe import plots

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"i2moe\[plots\]"):
        plots.plot_weight_distributions(_result([[0.25] * 4], labels=[0]))
