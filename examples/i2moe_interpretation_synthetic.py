"""Train tiny I2MoE models on the synthetic tasks of `i2moe.synthetic` and interpret them.

- label = sign of `a[0]` (only modality `a` matters): the uniqueness expert of `a` carries the
  weight and is accurate on its own;
- label = XOR of the signs of `a[0]` and `b[0]` (synergy): with the paper's objective the model
  learns it by routing samples between experts that are each at chance (docs/i2moe.md, "What the
  weights mean"); with the default label-guided losses the synergy expert learns it itself.

Writes `docs/images/i2moe_weights_synthetic.png`, `docs/images/i2moe_contributions_synthetic.png`,
`docs/images/i2moe_contributions_xor.png` (the paper's objective) and
`docs/images/i2moe_contributions_xor_guided.png` (the defaults) and prints each dataset-level summary
(seconds on a CPU):

    python examples/i2moe_interpretation_synthetic.py
"""

from pathlib import Path

import torch

from i2moe.configuration_i2moe import I2MOE_PAPER_OBJECTIVE
from i2moe.plots import plot_sample_contributions, plot_weight_distributions
from i2moe.synthetic import dominant_by_quadrant, interpret_synthetic, train_synthetic


IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
LABELS = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}


def report(task: str, result, tag: str) -> None:
    summary = result.summary()
    weights = {name: round(value, 3) for name, value in summary["overall"]["mean_weight"].items()}
    alone = {name: round(value, 3) for name, value in summary["component_accuracy"].items()}
    print(f"[{tag}] dominant type {summary['dominant_type']}, mean weights {weights}")
    print(f"[{tag}] accuracy {summary['accuracy']:.3f}; each expert alone {alone}")
    print(f"[{tag}] dominant expert per sign quadrant of (a[0], b[0]): {dominant_by_quadrant(result, task)}")


def main() -> None:
    torch.set_num_threads(1)
    IMAGES.mkdir(parents=True, exist_ok=True)

    model = train_synthetic("uniqueness", steps=100, lr=1e-2, seed=0, **LABELS)
    result = interpret_synthetic(model, "uniqueness", size=400)
    report("uniqueness", result, "uniqueness")
    plot_weight_distributions(result, by_class=True, path=IMAGES / "i2moe_weights_synthetic.png",
                              title="Label = sign(a[0]): weight distribution per class")
    plot_sample_contributions(result, indices=range(12), path=IMAGES / "i2moe_contributions_synthetic.png")

    titles = {"paper's objective": "each sample leans on one expert, none is right alone",
              "defaults": "the synergy expert carries it"}
    for objective, settings, name in (("paper's objective", I2MOE_PAPER_OBJECTIVE, "i2moe_contributions_xor.png"),
                                      ("defaults", {}, "i2moe_contributions_xor_guided.png")):
        model = train_synthetic("synergy", steps=300, lr=1e-2, seed=0, i2moe=settings, **LABELS)
        result = interpret_synthetic(model, "synergy", size=400)
        report("synergy", result, f"synergy, {objective}")
        plot_sample_contributions(result, indices=range(12), path=IMAGES / name,
                                  title=f"Label = XOR(a[0] > 0, b[0] > 0), {objective}: {titles[objective]}")


if __name__ == "__main__":
    main()
