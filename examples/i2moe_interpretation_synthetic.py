"""Train a tiny I2MoE on synthetic data whose label depends on modality `a` only, then interpret it.

Writes `docs/images/i2moe_weights_synthetic.png` and `docs/images/i2moe_contributions_synthetic.png`
and prints the dataset-level summary (seconds on a CPU):

    python examples/i2moe_interpretation_synthetic.py
"""

from pathlib import Path

import torch

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
from i2moe.interpretation import interpret
from i2moe.plots import plot_sample_contributions, plot_weight_distributions


ROOT = Path(__file__).resolve().parents[1]


def make_batch(size: int) -> dict:
    a, b = torch.randn(size, 4), torch.randn(size, 4)
    return {"a_features": a, "b_features": b, "labels": (a[:, 0] > 0).long()}


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = I2MoEConfig(
        modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(input_size=4, hidden_size=16, num_hidden_layers=1)},
                    {"name": "b", "tower": I2MoEFeaturesConfig(input_size=4, hidden_size=16, num_hidden_layers=1)}],
        hidden_size=16, fusion="concat", fusion_hidden_size=16, num_labels=2, dropout=0.0,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
        method="i2moe", i2moe_lambda_int=0.5, i2moe_reweight_dropout=0.0,
    )
    model = I2MoEForClassification(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        model(**make_batch(64)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    held_out = make_batch(400)
    data = [dict(zip(held_out, values)) for values in zip(*held_out.values())]
    result = interpret(model, data, batch_size=100)
    summary = result.summary()
    print("dominant interaction type:", summary["dominant_type"], summary["overall"]["mean_weight"])
    (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
    plot_weight_distributions(result, by_class=True, path=ROOT / "docs" / "images" / "i2moe_weights_synthetic.png",
                              title="Label = sign(a[0]): weight distribution per class")
    plot_sample_contributions(result, indices=range(12), path=ROOT / "docs" / "images" / "i2moe_contributions_synthetic.png")


if __name__ == "__main__":
    main()
