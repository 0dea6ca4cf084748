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

This file travels with saved models as Hub remote code: it imports only torch and transformers, and
never the model (the pipeline gets the model and its processor from `pipeline()`).
"""

from __future__ import annotations

import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY


PIPELINE_TASK = "multimodal-classification"


class MultimodalClassificationPipeline(Pipeline):
    r"""
    Classifies samples of any subset of the model's modalities. An input is one dict `{modality:
    value}` (or a list of them); a modality that is absent (or `None`) is missing, and the model
    puts its null tokens in its place. Values are what the model's `I2MoEProcessor` takes (a text
    `str`, an image as a PIL image / file path / array, an audio waveform, a feature list).

    Call arguments:
        top_k (`int`, *optional*, defaults to 5): how many labels to return per sample, best first
            (at most `num_labels`).

    Returns, per sample, a list of `{"label": str, "score": float}`: softmax probabilities for
    single-label models, per-label sigmoid probabilities for multi-label ones.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def _sanitize_parameters(self, top_k: int | None = None, **kwargs):
        if kwargs:
            raise TypeError(f"{PIPELINE_TASK}: unexpected argument(s) {sorted(kwargs)}; it takes `top_k`")
        postprocess = {}
        if top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise ValueError(f"{PIPELINE_TASK}: `top_k` must be a positive int, got {top_k!r}")
            postprocess["top_k"] = top_k
        return {}, {}, postprocess

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

    def _forward(self, model_inputs: dict):
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs: dict, top_k: int = 5) -> list[dict]:
        logits = model_outputs["logits"][0].float()
        if self.model.config.problem_type == "multi_label_classification":
            scores = torch.sigmoid(logits)
        else:
            scores = torch.softmax(logits, dim=-1)
        values, indices = scores.topk(min(top_k, scores.numel()))
        id2label = self.model.config.id2label
        return [{"label": id2label[index], "score": value} for value, index in zip(values.tolist(), indices.tolist())]


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
