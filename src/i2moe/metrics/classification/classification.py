"""Classification metrics for single-label predictions: accuracy and macro-averaged F1.

A local `evaluate` module (loaded by path, no network): `i2moe.metrics.load_metric("classification")`.
Macro-F1 averages the per-class F1 over the classes that occur in the references or the
predictions, so rare classes weigh as much as frequent ones (the fashion products are imbalanced).
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = "Accuracy and macro-averaged F1 of integer class predictions."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class indices.
    references (`list[int]`): true class indices.
Returns:
    accuracy (`float`): fraction of correct predictions.
    macro_f1 (`float`): unweighted mean of the per-class F1 scores.
Examples:
    >>> from i2moe.metrics import load_metric
    >>> load_metric("classification").compute(predictions=[0, 1, 1], references=[0, 1, 2])
    {'accuracy': 0.6666666666666666, 'macro_f1': 0.5555555555555555}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        classes = np.union1d(predictions, references)
        true_positives = np.array([np.sum((predictions == c) & (references == c)) for c in classes])
        predicted = np.array([np.sum(predictions == c) for c in classes])
        actual = np.array([np.sum(references == c) for c in classes])
        # F1 = 2 TP / (predicted + actual); both are > 0 for every class in the union.
        f1 = 2 * true_positives / (predicted + actual)
        return {"accuracy": float(np.mean(predictions == references)), "macro_f1": float(np.mean(f1))}
