"""Publishing I2MoE models to the Hugging Face Hub: model, processor, remote code and a model card.

THE way to publish is [`push_to_hub`] (or `model.push_to_hub(repo_id, processor=...)`, which calls
it while this package is installed, or [`ModelCardTrainerMixin`] for `Trainer(push_to_hub=True)`).
It writes one folder with [`save_for_hub`] and uploads that folder in one commit:

- `config.json` + `model.safetensors` and the remote-code files (`configuration_i2moe.py`,
  `modeling_i2moe.py`, ... named by `auto_map`), so `AutoModel.from_pretrained(repo,
  trust_remote_code=True)` works where this package is not installed;
- the processor (`processor_config.json`, `processing_i2moe.py`, one subfolder per modality);
- `README.md`, the model card of [`build_model_card`]: Hub metadata (`library_name`,
  `pipeline_tag`, tags, the towers as `base_model`, datasets, `model-index` results) and a body
  with the towers, method and fusion, results, the dataset-level interaction composition (a table
  and the figure uploaded beside the card), the training setup, limitations and loading snippets.

This module is not remote code: the files that travel with a model never import it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .modeling_i2moe import I2MoEForClassification


if TYPE_CHECKING:
    from transformers import TrainingArguments


CARD_NAME = "README.md"
FIGURE_NAME = "interaction_composition.png"
ATTRIBUTION_FIGURE_NAME = "interaction_attribution.png"
# The tower input a modality takes tells its kind when no processor is given.
_KIND_OF_TOWER_INPUT = {"input_ids": "text", "pixel_values": "image", "input_values": "audio",
                        "input_features": "audio", "features": "features"}
_TASK_OF_KIND = {"text": "text-classification", "image": "image-classification",
                 "audio": "audio-classification", "features": "tabular-classification"}
# Trainer's evaluation logs also hold speed figures; those are not results.
_NOT_RESULTS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "step")
# The settings each fusion backbone reads; the others' settings are left out of the card.
_FUSION_SETTINGS = {
    "concat": {"fusion_hidden_size"},
    "lrtf": {"lrtf_rank", "lrtf_output_size", "fusion_hidden_size"},
    "transformer": {"fusion_num_layers", "fusion_num_heads", "fusion_intermediate_size"},
}
_METHOD_SUBCONFIGS = {"i2moe", "dmil", "i2m2"}
_TRAINING_FIELDS = {
    "learning_rate": "learning rate", "num_train_epochs": "epochs", "max_steps": "max steps",
    "per_device_train_batch_size": "batch size (per device)", "gradient_accumulation_steps": "gradient accumulation",
    "weight_decay": "weight decay", "lr_scheduler_type": "scheduler", "warmup_steps": "warmup steps",
    "optim": "optimizer", "bf16": "bf16", "fp16": "fp16", "seed": "seed",
}
_CITATION = """@inproceedings{xin2025i2moe,
  title     = {I2MoE: Interpretable Multimodal Interaction-aware Mixture-of-Experts},
  author    = {Xin, Jiayi and others},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2025}
}"""


def build_model_card(
    model: I2MoEForClassification,
    *,
    repo_id: str | None = None,
    processor=None,
    dataset_name: str | None = None,
    dataset_id: str | None = None,
    eval_split: str = "test",
    eval_results: Mapping[str, float] | Sequence[EvalResult] | None = None,
    additional_results: Mapping[str, Mapping[str, float]] | None = None,
    interpretation_summary: Mapping[str, Any] | None = None,
    interpretation_split: str | None = None,
    figure_path: str | Path | None = None,
    attribution_summary: Mapping[str, Any] | None = None,
    attribution_split: str | None = None,
    attribution_figure_path: str | Path | None = None,
    training_args: TrainingArguments | Mapping[str, Any] | None = None,
    license: str | None = "apache-2.0",
    pipeline_tag: str | None = None,
    tags: Sequence[str] | None = None,
    description: str | None = None,
    tower_sources_overrides: Mapping[str, str] | None = None,
) -> ModelCard:
    r"""
    The model card of a trained I2MoE model: Hub metadata in the YAML header, documentation below.

    Args:
        model: the trained model; its config gives the towers, method, fusion and labels.
        repo_id: the Hub repository (`"org/name"`), used in the title and the loading snippets.
        processor (`I2MoEProcessor`, *optional*): gives the modality kinds and a call example.
        dataset_name: the dataset's human-readable name (e.g. `"Fashion Product Images (small)"`).
        dataset_id: the dataset's Hub id, if it has one (`datasets` metadata; defaults to none).
        eval_split: the split `eval_results` were measured on.
        eval_results: `{metric: value}` (e.g. `{"accuracy": 0.91}`; a Trainer's `eval_` prefixes
            are removed and speed figures dropped) or `EvalResult`s; they become `model-index`.
        additional_results: `{condition: {metric: value}}`, more columns of the results table
            (not in `model-index`), e.g. `{"test, without text": {"accuracy": 0.71}}`.
        interpretation_summary: the dataset-level interaction composition: an
            `i2moe.interpretation.InterpretationResult` or its `summary()` (mean, std and dominant
            share of each interaction type's weight, overall and per class).
        interpretation_split: the split the composition was measured on.
        figure_path: the composition plot; shown in the card as `interaction_composition.png`
            (`save_for_hub` copies it beside the card).
        attribution_summary: the interaction attribution (`i2moe.attribution.AttributionResult`
            or its `summary()`): mean redundancy, uniqueness and synergy in nats, overall and per
            class, and for I2MoE / DMIL what each component's own logits carry.
        attribution_split: the split the attribution was measured on.
        attribution_figure_path: an attribution plot (e.g. `i2moe.plots.plot_attribution_by_class`);
            shown as `interaction_attribution.png` (`save_for_hub` copies it beside the card).
        training_args: `TrainingArguments` or a `{setting: value}` mapping for the training table.
        license, pipeline_tag, tags: Hub metadata; `pipeline_tag` defaults to the classification
            task of the modalities' kind when they share one, else `"other"`.
        description: a paragraph placed under the title.
        tower_sources_overrides: modality -> where its tower came from, for towers loaded from a local
            folder: a Hub id (e.g. `"sentence-transformers/all-MiniLM-L6-v2"`, listed as `base_model`)
            or a description. Local paths are never published (see [`tower_sources`]).

    Example:

    ```python
    >>> import torch
    >>> from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
    >>> from i2moe.hub import build_model_card
    >>> config = I2MoEConfig(modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(input_size=3)},
    ...                                  {"name": "b", "tower": I2MoEFeaturesConfig(input_size=2)}],
    ...                      hidden_size=16, num_labels=2)
    >>> card = build_model_card(I2MoEForClassification(config), repo_id="org/demo",
    ...                         dataset_name="toy", eval_results={"eval_accuracy": 0.75})
    >>> card.data.pipeline_tag, card.data.eval_results[0].metric_value
    ('tabular-classification', 0.75)
    ```
    """
    config = model.config
    kinds = modality_kinds(model, processor)
    if pipeline_tag is None:
        pipeline_tag = _TASK_OF_KIND[next(iter(kinds.values()))] if len(set(kinds.values())) == 1 else "other"
    results = _eval_results(eval_results, pipeline_tag, dataset_name or dataset_id, dataset_id, eval_split)
    sources = tower_sources(model, overrides=tower_sources_overrides)
    base_models = _unique(source for source in sources.values() if _is_hub_id(source))
    model_name = repo_id.split("/")[-1] if repo_id else f"i2moe-{config.method}-{config.fusion}"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license,
        tags=_unique(["i2moe", "multimodal", config.method, f"fusion-{config.fusion}", "custom_code",
                      *config.modality_names, *(tags or [])]),
        base_model=base_models or None,
        # Several towers are built upon, none merged: without this the Hub reads a list as a merge.
        base_model_relation="finetune" if base_models else None,
        datasets=[dataset_id] if dataset_id else None,
        metrics=_unique(result.metric_type for result in results) or None,
        model_name=model_name,
        eval_results=results or None,
    )
    sections = [
        f"# {model_name}",
        description or _default_description(model, kinds, dataset_name),
        _model_section(model, kinds, sources),
        _results_section(results, additional_results, dataset_name, eval_split),
        _interpretation_section(interpretation_summary, figure_path, config, interpretation_split),
        _attribution_section(attribution_summary, attribution_figure_path, attribution_split),
        _training_section(training_args, model),
        _limitations_section(model),
        _usage_section(model, repo_id or f"your-org/{model_name}", processor, kinds),
        "## Citation\n\n```bibtex\n" + _CITATION + "\n```" if config.method == "i2moe" else "",
    ]
    body = "\n\n".join(section for section in sections if section)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")


def save_for_hub(
    model: I2MoEForClassification,
    save_directory: str | Path,
    *,
    processor=None,
    card: ModelCard | None = None,
    figure_path: str | Path | None = None,
    **card_kwargs,
) -> Path:
    """Write everything a Hub repository of this model holds into `save_directory`: the model
    (safetensors + remote code), the processor, the figure and `README.md` (`card`, or one built by
    [`build_model_card`] from `card_kwargs`). Returns the folder."""
    save_directory = Path(save_directory)
    model.save_pretrained(save_directory)
    if processor is not None:
        _check_processor_matches(model, processor)
        processor.save_pretrained(save_directory)
    if figure_path is not None:
        _copy_figure(figure_path, save_directory)
    if card_kwargs.get("attribution_figure_path") is not None:
        _copy_figure(card_kwargs["attribution_figure_path"], save_directory, ATTRIBUTION_FIGURE_NAME)
    if card is None:
        card = build_model_card(model, processor=processor, figure_path=figure_path, **card_kwargs)
    elif card_kwargs:
        raise TypeError(f"save_for_hub: got both a `card` and card settings {sorted(card_kwargs)}; give one")
    card.save(save_directory / CARD_NAME)
    return save_directory


def push_to_hub(
    model: I2MoEForClassification,
    repo_id: str,
    *,
    processor=None,
    card: ModelCard | None = None,
    figure_path: str | Path | None = None,
    commit_message: str = "Upload I2MoE model, processor and model card",
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    **card_kwargs,
):
    r"""
    Publish a model: create the repository if needed, write [`save_for_hub`]'s folder and upload it
    in one commit (`HfApi.create_commit`). Returns the `CommitInfo`.

    `card_kwargs` go to [`build_model_card`] (`dataset_name`, `eval_results`,
    `interpretation_summary`, `training_args`, ...).

    Example:

    ```python
    >>> from i2moe.hub import push_to_hub
    >>> push_to_hub(model, "my-org/fashion-i2moe", processor=processor,  # doctest: +SKIP
    ...             dataset_name="Fashion Product Images (small)", eval_results={"accuracy": 0.93},
    ...             interpretation_summary=summary, figure_path="composition.png")
    ```
    """
    if processor is not None:
        _check_processor_matches(model, processor)  # before anything is created on the Hub
    api = HfApi(library_name="i2moe")
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if card is None:
        card_kwargs["repo_id"] = repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_for_hub(model, folder, processor=processor, card=card, figure_path=figure_path, **card_kwargs)
        # One commit holding every file of the folder, as transformers' own `push_to_hub` sends it.
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, token=token,
                                 revision=revision, create_pr=create_pr)


def _copy_figure(figure_path, folder: Path, name: str = FIGURE_NAME) -> None:
    """A card figure into `folder` under `name` (unless it is already that file)."""
    figure_path = Path(figure_path)
    if not figure_path.is_file():
        field = "figure_path" if name == FIGURE_NAME else "attribution_figure_path"
        raise FileNotFoundError(f"{field}: {figure_path} does not exist")
    if figure_path.resolve() != (folder / name).resolve():
        shutil.copyfile(figure_path, folder / name)


class ModelCardTrainerMixin:
    r"""
    Makes `Trainer.push_to_hub` (and so `TrainingArguments(push_to_hub=True)` + `trainer.push_to_hub()`)
    upload this package's model card and composition figure instead of the generic Trainer card.

    `Trainer.push_to_hub` saves the model and `processing_class` into `output_dir`, calls
    `create_model_card` (which writes `output_dir/README.md`) and uploads `output_dir`; this mixin
    replaces only `create_model_card`. Extra keyword arguments of `trainer.push_to_hub(...)` reach
    it: any argument of [`build_model_card`] (`dataset_name`, `eval_results` (default: the last
    evaluation in the logs), `interpretation_summary`, `figure_path`, `additional_results`, ...),
    and `processor`: the `I2MoEProcessor`, when it is neither the trainer's `processing_class` nor
    its `processor` attribute (it is then saved into `output_dir` and uploaded with the model).
    Calling `trainer.create_model_card(...)` alone writes the card without uploading.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from i2moe.hub import ModelCardTrainerMixin
    >>> class CardTrainer(ModelCardTrainerMixin, Trainer):
    ...     pass
    >>> # trainer = CardTrainer(model, args, processing_class=processor, ...); trainer.train()
    >>> # trainer.push_to_hub(dataset_name="...", interpretation_summary=summary, figure_path="fig.png")
    ```
    """

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = "apache-2.0",
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        *,
        dataset_name: str | None = None,
        dataset_id: str | None = None,
        eval_split: str = "validation",
        eval_results: Mapping[str, float] | None = None,
        figure_path: str | Path | None = None,
        processor=None,
        **card_settings,
    ) -> None:
        if not self.is_world_process_zero():
            return
        unsupported = {"language": language, "finetuned_from": finetuned_from, "dataset_args": dataset_args}
        given = sorted(name for name, value in unsupported.items() if value is not None)
        if given:
            raise TypeError(f"create_model_card: {given} are not used by the I2MoE model card (the towers are the base models)")
        output_dir = Path(self.args.output_dir)
        model = self.accelerator.unwrap_model(self.model)
        processor = processor or _i2moe_processor(self.processing_class) or _i2moe_processor(getattr(self, "processor", None))
        if processor is not None and not (output_dir / "processor_config.json").exists():
            processor.save_pretrained(output_dir)  # a processor kept outside `processing_class` (see its docs)
        if eval_results is None:
            eval_results = next((entry for entry in reversed(self.state.log_history) if "eval_loss" in entry), None)
        if figure_path is not None:
            _copy_figure(figure_path, output_dir)
        if card_settings.get("attribution_figure_path") is not None:
            _copy_figure(card_settings["attribution_figure_path"], output_dir, ATTRIBUTION_FIGURE_NAME)
        card = build_model_card(
            model,
            repo_id=getattr(self, "hub_model_id", None) or self.args.hub_model_id or model_name,
            processor=processor,
            dataset_name=dataset_name or _first(dataset),
            dataset_id=dataset_id or _first(dataset_tags),
            eval_split=eval_split,
            eval_results=eval_results,
            figure_path=figure_path,
            training_args={**training_settings(self.args), "optimizer steps": self.state.global_step},
            license=license,
            pipeline_tag=_first(tasks),
            tags=[tags] if isinstance(tags, str) else tags,
            **card_settings,
        )
        card.save(output_dir / CARD_NAME)


def modality_kinds(model: I2MoEForClassification, processor=None) -> dict[str, str]:
    """Modality name -> `"text"`, `"image"`, `"audio"` or `"features"`: the processor's kinds when
    given, else told by the tower's input (`input_ids` is text, `pixel_values` an image, ...)."""
    if processor is not None and getattr(processor, "kinds", None):
        return {name: processor.kinds[name] for name in model.config.modality_names}
    kinds = {}
    for name in model.config.modality_names:
        arguments = [key[len(name) + 1:] for key in model.input_names if key.startswith(f"{name}_")]
        kinds[name] = next((_KIND_OF_TOWER_INPUT[a] for a in arguments if a in _KIND_OF_TOWER_INPUT), "features")
    return kinds


def tower_sources(model: I2MoEForClassification, overrides: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Modality -> where its tower's weights came from: `overrides`, else `ModalityConfig.tower_name_or_path`
    when it is a Hub id; a local folder is given by its name only ("local folder `model`"), since a
    path on the publisher's machine means nothing to readers and `base_model` must name Hub models."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(model.config.modality_names))
    if unknown:
        raise ValueError(f"tower sources given for unknown modalities {unknown}; the model has {model.config.modality_names}")
    sources = {}
    for modality in model.config.modalities:
        source = overrides.get(modality.name, modality.tower_name_or_path)
        if source and modality.name not in overrides and not _is_hub_id(source):
            source = f"local folder `{Path(source).name}`"
        sources[modality.name] = source
    return sources


def _is_hub_id(value: str | None) -> bool:
    return bool(value) and re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None and not value.startswith(".") \
        and not Path(value).exists()


def training_settings(args: "TrainingArguments | Mapping[str, Any]") -> dict[str, Any]:
    """The settings of `TrainingArguments` worth a line in a model card, by readable name."""
    if isinstance(args, Mapping):
        return dict(args)
    values = args.to_dict()
    settings = {}
    for field, label in _TRAINING_FIELDS.items():
        value = values.get(field)
        if field == "max_steps" and value is not None and value <= 0:
            continue  # -1: training length is given by epochs
        if field in ("bf16", "fp16") and not value:
            continue
        # Whole numbers read as such (TrainingArguments keeps some counts as floats).
        settings[label] = int(value) if isinstance(value, float) and value.is_integer() and field != "learning_rate" else value
    return settings


def _i2moe_processor(candidate):
    return candidate if hasattr(candidate, "modality_names") else None


def _check_processor_matches(model: I2MoEForClassification, processor) -> None:
    names = getattr(processor, "modality_names", None)
    if names is not None and list(names) != model.config.modality_names:
        raise ValueError(
            f"processor modalities {list(names)} do not match the model's {model.config.modality_names} "
            "(same names, same order: they fix the columns of `modality_mask`)"
        )


def _eval_results(eval_results, task_type: str, dataset_name, dataset_id, split) -> list[EvalResult]:
    if not eval_results:
        return []
    if not isinstance(eval_results, Mapping):
        return list(eval_results)
    if dataset_name is None:
        raise ValueError("eval_results need `dataset_name` (or `dataset_id`): model-index results name their dataset")
    return [
        EvalResult(task_type=task_type, dataset_type=dataset_id or dataset_name, dataset_name=dataset_name,
                   dataset_split=split, metric_type=metric, metric_name=metric.replace("_", " "), metric_value=value)
        for metric, value in _metric_values(eval_results, split).items()
    ]


def _metric_values(metrics: Mapping[str, Any], split: str) -> dict[str, float]:
    """`{metric: value}` without Trainer's `eval_` / `<split>_` key prefixes and without speed figures."""
    values = {}
    for key, value in metrics.items():
        metric = key.removeprefix("eval_").removeprefix(f"{split}_")
        if metric in _NOT_RESULTS or metric.endswith(_NOT_RESULTS) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values[metric] = round(float(value), 4)
    return values


def _default_description(model, kinds: dict[str, str], dataset_name: str | None) -> str:
    config = model.config
    modalities = ", ".join(f"{name} ({kind})" for name, kind in kinds.items())
    task = "regression" if config.num_labels == 1 else f"{config.num_labels}-class classification"
    method = {"vanilla": "plain fusion", "i2moe": "I2MoE interaction experts", "i2m2": "I2M2 inter- and intra-modality heads",
              "dmil": "DMIL interaction decomposition"}.get(config.method, config.method)
    if getattr(config, "i2m2", None) is not None:
        method += f", with I2M2 unimodal heads (`i2m2.mode={config.i2m2.mode}`)"
    on = f" on {dataset_name}" if dataset_name else ""
    return (f"A multimodal {task} model{on}, built with the `i2moe` library: modalities {modalities}, "
            f"combined by {method} over a `{config.fusion}` fusion backbone.")


def _model_section(model, kinds: dict[str, str], sources: dict[str, str | None]) -> str:
    config = model.config
    rows = ["| modality | kind | tower | pretrained from | parameters | pooling | tokens | frozen |",
            "|---|---|---|---|---|---|---|---|"]
    for modality in config.modalities:
        source = sources[modality.name]
        source = f"[{source}](https://huggingface.co/{source})" if _is_hub_id(source) else (source or "random init")
        parameters = sum(p.numel() for p in model.encoders[modality.name].tower.parameters())
        rows.append(f"| {modality.name} | {kinds[modality.name]} | `{modality.tower.model_type}` | {source} | "
                    f"{_count(parameters)} | {modality.pooling} | {modality.num_tokens} | {'yes' if modality.freeze else 'no'} |")
    total = sum(p.numel() for p in model.parameters())
    # Told by the config, not `requires_grad`, which a loaded model may not carry over.
    frozen = sum(p.numel() for m in config.modalities if m.freeze for p in model.encoders[m.name].tower.parameters())
    settings = _method_settings(config)
    labels = list(config.id2label.values())
    shown = ", ".join(f"`{label}`" for label in labels[:40]) + (f", ... ({len(labels)} in all)" if len(labels) > 40 else "")
    return "\n".join([
        "## Model", "",
        "Each modality's tower encodes its input once; the output is pooled (or resampled to several tokens), "
        f"projected to a shared width of {config.hidden_size} and layer-normed. The method `{config.method}` then "
        f"combines the modality tokens with the `{config.fusion}` fusion backbone.", "",
        "### Towers", "", *rows, "",
        f"Parameters: {_count(total)} in all, {_count(total - frozen)} trained (frozen towers excluded).", "",
        "### Method and fusion", "",
        "| setting | value |", "|---|---|",
        *[f"| `{key}` | `{value}` |" for key, value in settings.items()], "",
        f"Labels ({config.num_labels}" + (f", `{config.problem_type}`" if config.problem_type else "") + f"): {shown}",
    ])


def _method_settings(config) -> dict[str, Any]:
    """The method and fusion settings: the config's fields beyond the generic `PreTrainedConfig` ones."""
    generic = {"modalities", "id2label", "label2id", "architectures", "auto_map", "transformers_version",
               "model_type", "dtype", "torch_dtype", "problem_type", "return_dict", "output_hidden_states",
               "output_attentions", "chunk_size_feed_forward", "is_encoder_decoder", "tie_word_embeddings"}
    unused = set().union(*_FUSION_SETTINGS.values()) - _FUSION_SETTINGS.get(config.fusion, set())
    values = config.to_dict()
    # The method sub-configs (`i2moe`, `dmil`, `i2m2`) are set only when in use; each field on a row.
    for method in _METHOD_SUBCONFIGS:
        values.update({f"{method}.{field}": value for field, value in (values.pop(method) or {}).items()})
    return {key: value for key, value in values.items() if (key in type(config).__annotations__ or "." in key)
            and key not in generic | unused and not key.endswith("_format_version")}


def _results_section(results: list[EvalResult], additional: Mapping | None, dataset_name, split) -> str:
    if not results:
        return ""
    columns = {split: {r.metric_type: r.metric_value for r in results}}
    columns.update({condition: _metric_values(metrics, split) for condition, metrics in (additional or {}).items()})
    rows = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for result in results:
        cells = [f"{column[result.metric_type]:.4f}" if result.metric_type in column else "–" for column in columns.values()]
        rows.append(f"| {result.metric_name or result.metric_type} | " + " | ".join(cells) + " |")
    where = f" on the {split} split of {dataset_name}" if dataset_name else f" on the {split} split"
    conditions = (" The other columns are the same data under other conditions (e.g. a modality removed from every "
                  "sample)." if additional else "")
    return "\n".join([f"## Results\n\nMeasured{where}.{conditions}\n", *rows])


def _interpretation_section(summary, figure_path, config, split: str | None) -> str:
    if summary is None:
        if config.method == "vanilla":
            return ("## Interaction composition\n\nNot available: method `vanilla` is one fusion backbone with no "
                    "interaction experts (`i2moe`) or gate (`dmil`) to read a composition from.")
        return ""
    if callable(getattr(summary, "summary", None)):  # an `InterpretationResult`
        summary = summary.summary()
    missing = sorted({"component_names", "overall"} - set(summary))
    if missing:
        raise ValueError(
            f"interpretation_summary: missing {missing}; expected `InterpretationResult.summary()` "
            "(i2moe.interpretation) or the result itself"
        )
    names = list(summary["component_names"])
    overall = summary["overall"]
    means = [overall["mean_weight"][name] for name in names]
    stds = [overall.get("std_weight", {}).get(name) for name in names]
    shares = overall.get("share_dominant")
    rows = ["| samples | " + " | ".join(f"`{name}`" for name in names) + " |", "|---" * (len(names) + 1) + "|",
            f"| **all** (n={summary.get('num_samples', '?')}), mean ± std | "
            + " | ".join(f"{m:.3f}" + (f" ± {s:.3f}" if s is not None else "") for m, s in zip(means, stds)) + " |"]
    if shares:
        rows.append("| **all**, share of samples it dominates | " + " | ".join(f"{shares[n]:.1%}" for n in names) + " |")
    grouped_by = {"label": "true class", "prediction": "predicted class"}.get(summary.get("grouped_by"), "class")
    for label, stats in (summary.get("per_class") or {}).items():
        weights = [stats["mean_weight"][name] for name in names]
        top = max(range(len(weights)), key=weights.__getitem__)
        cells = [f"**{w:.3f}**" if k == top else f"{w:.3f}" for k, w in enumerate(weights)]
        rows.append(f"| {grouped_by} = {label}, mean | " + " | ".join(cells) + " |")
    top = max(range(len(means)), key=means.__getitem__)
    on = f" on the {split} split" if split else ""
    figure = (f"\n\n![Distribution of each interaction type's weight over the samples]({FIGURE_NAME})"
              if figure_path is not None else "")
    return "\n".join([
        "## Interaction composition", "",
        f"For every sample the model weighs its interaction experts (the weights sum to 1); these are the weights "
        f"over {summary.get('num_samples', 'the')} samples{on}. A uniform mix would give each of the {len(names)} "
        f"types {1 / len(names):.3f}. `uniqueness_<modality>`: information only that modality carries; `synergy`: "
        "information that appears only when the modalities are combined; `redundancy`: information every modality "
        f"carries. On average the model relies most on `{names[top]}` (mean weight {means[top]:.3f}); per class, the "
        "largest mean weight is in bold.", "",
        *rows,
    ]) + figure + "\n\nThe weights describe which interaction type the model uses, not causal effects of the modalities."


def _attribution_section(summary, figure_path, split: str | None) -> str:
    if summary is None:
        return ""
    if callable(getattr(summary, "summary", None)):  # an `AttributionResult`
        summary = summary.summary()
    missing = sorted({"component_names", "overall", "prior_source", "explained"} - set(summary))
    if missing:
        raise ValueError(f"attribution_summary: missing {missing}; expected `AttributionResult.summary()` "
                         "(i2moe.attribution) or the result itself")
    names = list(summary["component_names"])
    overall = summary["overall"]

    def cells(means: Mapping[str, float]) -> str:
        top = max(names, key=means.__getitem__)
        return " | ".join(f"**{means[n]:.3f}**" if n == top else f"{means[n]:.3f}" for n in names)

    rows = ["| samples | " + " | ".join(f"`{name}`" for name in names) + " |", "|---" * (len(names) + 1) + "|",
            f"| **all** (n={summary.get('num_samples', '?')}), mean (nats) | {cells(overall['mean'])} |",
            "| **all**, share of samples it dominates | "
            + " | ".join(f"{overall['share_dominant'][n]:.1%}" for n in names) + " |"]
    grouped_by = {"label": "true class", "prediction": "predicted class"}.get(summary.get("grouped_by"), "class")
    rows += [f"| {grouped_by} = {label}, mean | {cells(stats['mean'])} |"
             for label, stats in (summary.get("per_class") or {}).items()]
    components = summary.get("model_components") or {}
    component_lines = []
    if components:
        component_lines = ["", "What each of the model's components carries (the attribution of its own logits), "
                           "beside the weight the model gives it:", "", "| component | mean weight | carries most |",
                           "|---|---|---|"]
        component_lines += [f"| `{name}` | {stats['mean_weight']:.3f} | `{stats['dominant_type']}` "
                            f"({stats['mean_values'][stats['dominant_type']]:.3f} nats) |"
                            for name, stats in components.items()]
    on = f" on the {split} split" if split else ""
    dropout = summary.get("modality_dropout")
    figure = (f"\n\n![Interaction attribution]({ATTRIBUTION_FIGURE_NAME})" if figure_path is not None else "")
    return "\n".join([
        "## Interaction attribution", "",
        f"Each sample's log-likelihood gain over the label prior (`{summary['prior_source']}`), for its "
        f"{summary['explained']}, split by evaluating the model with every subset of its modalities (absent = null "
        f"tokens) into redundancy, uniqueness and synergy, in nats (`i2moe.attribution`; docs/interpretation.md){on}. "
        f"Mean information in all: {summary.get('mean_information', float('nan')):.3f} nats; the largest mean term is "
        f"`{summary['dominant_type']}` (bold: the largest per row). "
        + (f"The model was trained with modality dropout {dropout}." if dropout else
           "**The model was not trained with modality dropout: predictions from a subset of the modalities, and so "
           "these values, are not reliable.**"), "",
        *rows, *component_lines,
    ]) + figure + ("\n\nThe values describe the model: they describe the data only as far as the model has learned "
                   "it (a model at chance attributes nothing).")


def _training_section(training_args, model) -> str:
    if training_args is None:
        return ""
    settings = training_settings(training_args)
    frozen = [m.name for m in model.config.modalities if m.freeze]
    lines = ["## Training", "", "| setting | value |", "|---|---|",
             *[f"| {key} | `{value}` |" for key, value in settings.items()]]
    if frozen:
        lines += ["", f"Frozen towers (weights and BatchNorm statistics fixed): {', '.join(frozen)}."]
    return "\n".join(lines)


def _limitations_section(model) -> str:
    config = model.config
    return "\n".join([
        "## Limitations", "",
        "- **Missing modalities.** A sample may lack any modality: leave it out of the processor's input (or mark "
        "it 0 in `modality_mask`). The model then skips that tower for the sample and puts the modality's *learned "
        "null tokens* in its place. Those tokens are only as good as the training data made them: if training "
        "never showed the model a sample without that modality, predictions without it are unreliable. Every "
        "sample needs at least one modality.",
        "- **Interaction composition.** Expert or gate weights tell which interaction type the model uses for a "
        "sample; they are correlational and depend on the data the model was trained on. The weighting model "
        "sees every modality and can itself combine experts that are each weak (on a synthetic XOR task I2MoE "
        "routes between uniqueness experts instead of using its synergy expert), so check each expert's own "
        "accuracy (`interpret(...).summary()['component_accuracy']`) before reading a weight as the data's "
        "interaction type, or measure that type with `i2moe.attribution.attribute` (see the attribution section, "
        "where given).",
        f"- **Domain.** Trained for {config.num_labels} {'outputs' if config.num_labels > 1 else 'output'} on the "
        "dataset named above; other label sets or input distributions need fine-tuning.",
        "- **Remote code.** Without the `i2moe` package, loading runs this repository's Python files "
        "(`trust_remote_code=True`): read them first, and pin a `revision`.",
    ])


def _usage_section(model, repo_id: str, processor, kinds: dict[str, str]) -> str:
    config = model.config
    imports = ["import torch"]
    if processor is not None:
        predict = [_processor_call(processor, kinds), "with torch.no_grad():", "    outputs = model(**batch)",
                   "labels = [model.config.id2label[i] for i in outputs.logits.argmax(-1).tolist()]"]
        if "image" in kinds.values():
            imports.append("from PIL import Image")
        if any(kind == "features" and len(processor.processors[name].feature_shape) > 1 for name, kind in kinds.items()):
            imports.insert(0, "import numpy as np")
    else:
        predict = ["with torch.no_grad():", f"    outputs = model({', '.join(f'{key}=...' for key in model.input_names)})"]
    note = ""
    if config.method in ("i2moe", "dmil"):
        field = "component_weights" if config.method == "i2moe" else "component_weights"
        note = (f"\n\n`outputs.{field}` `(batch, components)` holds each sample's interaction composition, in the "
                "order of `model.interaction.component_names`.")
    with_processor = processor is not None
    return "\n".join([
        "## How to use", "",
        "### Without the `i2moe` package", "",
        "The model" + (" and processor" if with_processor else "") + " code ships with this repository (`auto_map` in "
        "`config.json`" + (" and `processor_config.json`" if with_processor else "") + "); transformers runs it with "
        "`trust_remote_code=True`.", "",
        "```python", *imports, "from transformers import AutoModel" + (", AutoProcessor" if with_processor else ""), "",
        f'repo = "{repo_id}"',
        "model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()",
        *(["processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)"] if with_processor else []),
        *predict, "```", "",
        "### With the `i2moe` package", "",
        "The package registers the Auto classes, so no remote code runs:", "",
        "```python", "from i2moe import I2MoEForClassification" + (", I2MoEProcessor" if with_processor else ""), "",
        f'repo = "{repo_id}"',
        "model = I2MoEForClassification.from_pretrained(repo).eval()",
        *(["processor = I2MoEProcessor.from_pretrained(repo)"] if with_processor else []),
        "```" + note,
    ])


def _processor_call(processor, kinds: dict[str, str]) -> str:
    """`batch = processor([...])` with one full sample and one that lacks the last modality."""
    values = {}
    for name, kind in kinds.items():
        if kind == "features":
            normalizer = processor.processors[name]
            shape, names = normalizer.feature_shape, getattr(normalizer, "feature_names", None) or []
            value = f"[0.0] * {shape[0]}" if len(shape) == 1 else f"np.zeros({tuple(shape)})"
            columns = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            values[name] = (value, f"  # {columns}" if columns else "")
        else:
            values[name] = ({"text": '"a short description"', "image": 'Image.open("example.jpg")',
                             "audio": "waveform"}[kind],
                            "  # 1-D float array at the feature extractor's sampling rate" if kind == "audio" else "")
    lines = ["batch = processor(["]
    names = list(values)
    lines.append("    {")
    lines += [f'        "{name}": {value},{comment}' for name, (value, comment) in values.items()]
    lines.append("    },")
    if len(names) > 1:
        lines.append("    {" + ", ".join(f'"{name}": {values[name][0]}' for name in names[:-1])
                     + f"}},  # no {names[-1]}: a missing modality")
    lines.append("])")
    return "\n".join(lines)


def _count(number: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if number >= size:
            return f"{number / size:.1f}{unit}"
    return str(number)


def _unique(values) -> list:
    return list(dict.fromkeys(value for value in values if value))


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


__all__ = [
    "ModelCardTrainerMixin", "build_model_card", "modality_kinds", "push_to_hub", "save_for_hub", "tower_sources",
    "training_settings",
]
