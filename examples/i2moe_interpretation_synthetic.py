"""Train a tiny I2MoE on synthetic data whose label depends on modality `a` only, then interpret it.

Writes `docs/images/i2moe_weights_synthetic.png` and `docs/images/i2moe_contributions_synthetic.png`
and prints the dataset-level summary (seconds on a CPU):

    python examples/i2moe_interpretation_synthetic.py
"""

from pathlib import Path

import torch

from i2moe.plots import plot_sample_contributions, plot_weight_distributions
from i2moe.synthetic import interpret_synthetic, train_synthetic


ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(1)
    model = train_synthetic("uniqueness", steps=100, lr=1e-2, seed=0,
                            id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    result = interpret_synthetic(model, "uniqueness", size=400)
    summary = result.summary()
    print("dominant interaction type:", summary["dominant_type"], summary["overall"]["mean_weight"])
    print("accuracy:", summary["accuracy"], "each expert alone:", summary["component_accuracy"])
    (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
    plot_weight_distributions(result, by_class=True, path=ROOT / "docs" / "images" / "i2moe_weights_synthetic.png",
                              title="Label = sign(a[0]): weight distribution per class")
    plot_sample_contributions(result, indices=range(12), path=ROOT / "docs" / "images" / "i2moe_contributions_synthetic.png")


if __name__ == "__main__":
    main()
