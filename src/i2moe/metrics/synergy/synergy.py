"""Synergy: the share of samples a multimodal model gets right while every unimodal model gets them wrong."""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Synergy (DMIL, CVPR 2026): the fraction of samples that the multimodal model classifies correctly
while every unimodal model (one per modality) classifies them incorrectly. It measures how much of
the model's accuracy comes from combining modalities rather than from any single one: an ensemble
of the unimodal models is right only where some member is right, so it scores (close to) 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): the multimodal model's predicted class per sample.
    references (`list[int]`): the true class per sample.
    unimodal_predictions (`list[list[int]]`): per sample, the predicted class of each unimodal
        model (same number of models for every sample).
Returns:
    synergy (`float`): fraction of samples with `prediction == reference` and every
        `unimodal_prediction != reference`.
    accuracy (`float`): the multimodal model's accuracy.
    unimodal_accuracy (`list[float]`): each unimodal model's accuracy.
Examples:
    >>> import evaluate
    >>> synergy = evaluate.load("path/to/i2moe/metrics/synergy")  # doctest: +SKIP
    >>> synergy.compute(predictions=[1, 0, 1], references=[1, 0, 0],
    ...                 unimodal_predictions=[[0, 0], [0, 1], [1, 1]])  # doctest: +SKIP
    {'synergy': 0.3333333333333333, 'accuracy': 0.6666666666666666, 'unimodal_accuracy': [0.3333333333333333, 0.0]}
"""

_CITATION = """
@inproceedings{dmil2026,
  title = {Decomposition-based Multimodal Interaction Learning},
  booktitle = {CVPR},
  year = {2026}
}
"""


class Synergy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "unimodal_predictions": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, unimodal_predictions):
        predictions, references = np.asarray(predictions), np.asarray(references)
        lengths = sorted({len(row) for row in unimodal_predictions})
        if len(lengths) != 1 or lengths[0] == 0:
            raise ValueError(
                "unimodal_predictions: expected, per sample, one prediction per unimodal model (the same number "
                f"of models, at least 1, for every sample); got rows of lengths {lengths}"
            )
        unimodal = np.asarray(unimodal_predictions)
        correct = predictions == references
        unimodal_correct = unimodal == references[:, None]
        return {
            "synergy": float((correct & ~unimodal_correct.any(1)).mean()),
            "accuracy": float(correct.mean()),
            "unimodal_accuracy": unimodal_correct.mean(0).tolist(),
        }
