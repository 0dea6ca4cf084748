#!/usr/bin/env python
"""The demo's summary (run by examples/demo.sh after training): the test metrics of the model, of each
modality alone and of the model with each modality missing; the interaction weights of a few
classes; then the saved folder reloaded with `AutoModel` / `AutoProcessor` and with `pipeline`, on
test products drawn at random (seeded), with the pipeline's per-sample attribution of each label.

    python examples/demo_report.py runs/fashion-demo [--num_examples 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoProcessor, pipeline

from i2moe.datasets_fashion import load_fashion_products


def print_metrics(results: dict, modalities: list[str]) -> None:
    rows = [("I2MoE, " + " + ".join(modalities), "test")]
    rows += [(f"{name} alone (unimodal baseline)", f"test_only_{name}") for name in modalities]
    rows += [(f"I2MoE, {name} missing", f"test_without_{name}") for name in modalities]
    print(f"\n{'test set (956 products)':40} {'accuracy':>9} {'macro-F1':>9}")
    for title, prefix in rows:
        if f"{prefix}_accuracy" in results:
            print(f"{title:40} {results[f'{prefix}_accuracy']:9.4f} {results[f'{prefix}_macro_f1']:9.4f}")


def print_interaction_weights(summary: dict, test, num_classes: int = 6) -> None:
    """Mean interaction weights of the most frequent test classes (the dataset-level attribution:
    which interactions the predictions rest on)."""
    names, class_names = summary["component_names"], test.features["labels"].names
    frequent = [class_names[label] for label, _ in Counter(test["labels"]).most_common(num_classes)]
    print(f"\nmean interaction weights on test, overall and for the {num_classes} most frequent classes")
    print(f"{'class':16} " + " ".join(f"{name:>18}" for name in names))
    for label, stats in [("(all classes)", summary["overall"]), *((name, summary["per_class"][name]) for name in frequent)]:
        print(f"{label:16} " + " ".join(f"{stats['mean_weight'][name]:18.3f}" for name in names))


def print_attribution(summary: dict, test, num_classes: int = 6) -> None:
    """The interaction attribution (i2moe.attribution, nats of log-likelihood gain over the label
    prior): what each modality alone, both redundantly and only their combination contribute to the
    predictions, overall and for the most frequent test classes."""
    names, class_names = summary["component_names"], test.features["labels"].names
    frequent = [class_names[label] for label, _ in Counter(test["labels"]).most_common(num_classes)]
    print(f"\ninteraction attribution on test (nats; explained: {summary['explained']}, prior: {summary['prior_source']})")
    print(f"{'class':16} " + " ".join(f"{name:>18}" for name in names) + f" {'dominant':>18}")
    rows = [("(all classes)", summary["overall"]), *((name, summary["per_class"][name]) for name in frequent
                                                      if name in summary["per_class"])]
    for label, stats in rows:
        dominant = max(stats["mean"], key=stats["mean"].get)
        print(f"{label:16} " + " ".join(f"{stats['mean'][name]:18.3f}" for name in names) + f" {dominant:>18}")


def print_examples(folder: Path, test, num_examples: int, seed: int) -> None:
    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    classifier = pipeline("multimodal-classification", model=str(folder), trust_remote_code=True)
    names = test.features["labels"].names
    rows = np.random.default_rng(seed).choice(len(test), size=num_examples, replace=False).tolist()
    # The last two products lose a modality, to show predictions with one missing.
    samples = [{"image": test[row]["image"], "text": test[row]["text"]} for row in rows]
    samples[-2]["image"], samples[-1]["text"] = None, None
    with torch.no_grad():
        predicted = model(**processor(samples)).logits.argmax(-1).tolist()
    print(f"\n{num_examples} test products drawn at random (seed {seed}); AutoModel and pipeline predictions, and "
          "the pipeline's attribution of its label (nats; return_attribution=True)")
    for row, sample, label in zip(rows, samples, predicted):
        [best] = classifier({name: value for name, value in sample.items() if value is not None}, top_k=1,
                            return_attribution=True)
        given = "+".join(name for name, value in sample.items() if value is not None)
        terms = " ".join(f"{name.replace('uniqueness_', 'U_')}={value:+.2f}" for name, value in best["attribution"].items())
        print(f"{test[row]['text'][:40]!r:43} {given:10} true={names[test[row]['labels']]:13} "
              f"model={model.config.id2label[label]:13} pipeline={best['label']} ({best['score']:.2f})  {terms}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--num_examples", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    results = json.loads((arguments.folder / "all_results.json").read_text())
    modalities = [modality["name"] for modality in json.loads((arguments.folder / "config.json").read_text())["modalities"]]
    print_metrics(results, modalities)
    test = load_fashion_products()["test"]
    print_attribution(json.loads((arguments.folder / "attribution_test.json").read_text())["summary"], test)
    print_interaction_weights(json.loads((arguments.folder / "interpretation_test.json").read_text())["summary"], test)
    print(f"\nfigures: {arguments.folder / 'interaction_attribution.png'}, {arguments.folder / 'interaction_composition.png'}"
          f"   model card: {arguments.folder / 'README.md'}")
    print_examples(arguments.folder, test, arguments.num_examples, arguments.seed)
    print(f"\nmodel + processor reloaded from {arguments.folder} with AutoModel / AutoProcessor and pipeline()")


if __name__ == "__main__":
    main()
