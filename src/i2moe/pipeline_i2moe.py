"""The `"multimodal-classification"` pipeline task: raw samples `{modality: value}` -> labels with scores.

```python
>>> from transformers import pipeline
>>> classifier = pipeline("multimodal-classification", model="my-model", trust_remote_code=True)  # doctest: +SKIP
>>> classifier({"image": "shoe.jpg", "text": "Puma Men Black Running Shoes"}, top_k=2)             # doctest: +SKIP
[{'label': 'Sports Shoes', 'score': 0.97}, {'label': 'Casual Shoes', 'score': 0.02}]
>>> classifier([{"text": "Titan Women Silver Watch"}, {"image": "bag.jpg"}])                      # doctest: +SKIP
```

A saved I2MoE model names this file in `config.custom_pipelines` and carries it as remote code
(`modeling_i2moe.py` imports it, so `save_pretrained` copies it beside the model), hence
`pipeline(..., trust_remote_code=True)` works where the i2moe package is not installed.

This file travels with saved models as Hub remote code: it imports only numpy, torch, transformers
and the decomposition (`decomposition_i2moe.py`, which travels with it), and never the model (the pipeline gets the model and its processor from `pipeline()`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .decomposition_i2moe import all_subsets, bitmask, check_prior, component_names_for, decompose


PIPELINE_TASK = "multimodal-classification"
ATTRIBUTED_PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")


class MultimodalClassificationPipeline(Pipeline):
    r"""
    Classifies samples of any subset of the model's modalities. An input is one dict `{modality:
    value}` (or a list of them); a modality that is absent (or `None`) is missing, and the model
    puts its null tokens in its place. Values are what the model's `I2MoEProcessor` takes (a text
    `str`, an image as a PIL image / file path / array, an audio waveform, a feature list).

    Call arguments:
        top_k (`int`, *optional*, defaults to 5): how many labels to return per sample, best first
            (at most `num_labels`).
        return_attribution (`bool`, *optional*, defaults to `False`): add to each returned label
            the sample's interaction attribution of that label (`{"uniqueness_<m>": ..., "redundancy":
            ..., "synergy": ...}`, in nats, summing to `log p(label | sample) − log p(label)`;
            docs/interpretation.md): every subset of the sample's modalities in one batched pass
            (`forward_subsets`). Meaningful for a model trained with modality dropout.
        label_prior (`list[float]`, *optional*): the training label distribution behind
            `log p(label)` (class frequencies or counts; each label's frequency for multi-label).
            Default: the model's `config.label_prior`.

    Returns, per sample, a list of `{"label": str, "score": float}` (and `"attribution"` when
    asked): softmax probabilities for single-label models, per-label sigmoid probabilities for
    multi-label ones.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def _sanitize_parameters(self, top_k: int | None = None, return_attribution: bool | None = None,
                             label_prior=None, **kwargs):
        if kwargs:
            raise TypeError(f"{PIPELINE_TASK}: unexpected argument(s) {sorted(kwargs)}; it takes `top_k`, "
                            "`return_attribution` and `label_prior`")
        forward, postprocess = {}, {}
        if top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise ValueError(f"{PIPELINE_TASK}: `top_k` must be a positive int, got {top_k!r}")
            postprocess["top_k"] = top_k
        if return_attribution is not None:
            if not isinstance(return_attribution, bool):
                raise ValueError(f"{PIPELINE_TASK}: `return_attribution` must be True or False, got {return_attribution!r}")
            forward["return_attribution"] = postprocess["return_attribution"] = return_attribution
        if return_attribution:
            postprocess["label_prior"] = self._label_prior(label_prior)
        elif label_prior is not None:
            raise ValueError(f"{PIPELINE_TASK}: `label_prior` is only used with `return_attribution=True`")
        return {}, forward, postprocess

    def _label_prior(self, label_prior) -> np.ndarray:
        config = self.model.config
        # Unset until the first labelled call: scored as single-label, as `postprocess` does.
        problem_type = config.problem_type or "single_label_classification"
        if problem_type not in ATTRIBUTED_PROBLEM_TYPES:
            raise ValueError(f"{PIPELINE_TASK}: `return_attribution` explains class labels; this model's problem_type "
                             f"is {problem_type!r}")
        if label_prior is None:
            label_prior = getattr(config, "label_prior", None)
        if label_prior is None:
            raise ValueError(f"{PIPELINE_TASK}: `return_attribution=True` needs the training label distribution: "
                             "pass `label_prior=[...]` (class frequencies or counts), or set `model.config.label_prior` "
                             "before saving the model")
        return check_prior(label_prior, problem_type, config.num_labels, f"{PIPELINE_TASK}: `label_prior`")

    def preprocess(self, sample: dict):
        names = list(self.processor.modality_names)
        if not isinstance(sample, dict):
            raise TypeError(f"{PIPELINE_TASK}: each input must be a dict {{modality: value}} with keys among {names}, "
                            f"got {type(sample).__name__}; e.g. classifier({{'{names[0]}': ...}})")
        unknown = sorted(set(sample) - set(names), key=str)
        if unknown:
            raise ValueError(f"{PIPELINE_TASK}: unknown modality name(s) {unknown}; this model takes {names} "
                             "(leave a modality out, or set it to None, when it is missing)")
        if all(value is None for value in sample.values()):
            raise ValueError(f"{PIPELINE_TASK}: the input has no modality; give at least one of {names}")
        return dict(self.processor([sample]))

    def _forward(self, model_inputs: dict, return_attribution: bool = False):
        if not return_attribution:
            return {"logits": self.model(**model_inputs).logits}
        # Every nonempty subset in one pass; the last one is all modalities, the prediction itself.
        subsets = all_subsets(self.model.config.num_modalities).to(self.device)
        subset_logits = self.model.forward_subsets(subsets, **model_inputs).logits[:, 0]  # (2^M − 1, C)
        return {"logits": subset_logits[-1:], "subset_logits": subset_logits, "present": model_inputs["modality_mask"][0]}

    def postprocess(self, model_outputs: dict, top_k: int = 5, return_attribution: bool = False,
                    label_prior: np.ndarray | None = None) -> list[dict]:
        logits = model_outputs["logits"][0].float()
        multi_label = self.model.config.problem_type == "multi_label_classification"
        scores = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
        values, indices = scores.topk(min(top_k, scores.numel()))
        id2label = self.model.config.id2label
        results = [{"label": id2label[index], "score": value} for value, index in zip(values.tolist(), indices.tolist())]
        if return_attribution:
            attributions = self._attribution(model_outputs, indices, label_prior, multi_label)
            for result, attribution in zip(results, attributions):
                result["attribution"] = attribution
        return results

    def _attribution(self, model_outputs: dict, labels: torch.Tensor, label_prior: np.ndarray,
                     multi_label: bool) -> list[dict]:
        """Per label in `labels`: the decomposition of `v(S) = log p(label | x_S)` (multi-label: the
        log-probability that the label is on) over the sample's present modalities, `v(∅)` from the prior."""
        subset_logits, present = model_outputs["subset_logits"].float(), model_outputs["present"].bool().cpu()
        if multi_label:  # each label's own Bernoulli: log sigmoid of its logit
            values = torch.nn.functional.logsigmoid(subset_logits[:, labels]).T  # (n, 2^M − 1)
        else:
            values = subset_logits.log_softmax(-1)[:, labels].T
        prior = np.log(label_prior[labels.numpy()])[:, None]  # (n, 1)
        num_modalities = present.numel()
        # i(S) at the effective subset S ∩ present: 0 where that is empty (only the prior is left).
        # (forward_subsets already evaluated subset S with only S ∩ present kept).
        effective = bitmask(all_subsets(num_modalities) & present).numpy()  # (2^M − 1,)
        gains = np.where(effective[None] != 0, values.cpu().double().numpy() - prior, 0.0)
        information = np.concatenate([np.zeros((len(prior), 1)), gains], 1)  # column 0: the empty set
        terms, _ = decompose(information, present.numpy())
        names = component_names_for(self.model.config.modality_names)
        return [dict(zip(names, row.tolist())) for row in terms]


PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=MultimodalClassificationPipeline, pt_model=AutoModel,
                                    type="multimodal")
# What a saved model's `config.custom_pipelines` holds, as `Pipeline.save_pretrained` would write it:
# the class as "file.Class" inside the model folder, which `pipeline(..., trust_remote_code=True)` loads.
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": f"{__name__.rsplit('.', 1)[-1]}.{MultimodalClassificationPipeline.__name__}",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
}

__all__ = ["CUSTOM_PIPELINES", "MultimodalClassificationPipeline", "PIPELINE_TASK"]
