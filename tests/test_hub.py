"""Publishing to the Hub, offline: what each publishing path sends (captured at `HfApi.create_commit`,
everything before it real), the model card, and loading the sent repository without the package, from a
folder and from a Hugging Face cache laid out as the Hub client lays it out."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, RepoUrl, constants, scan_cache_dir
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments

from i2moe import I2MoEForClassification, I2MoEProcessor
from i2moe.hub import FIGURE_NAME, ModelCardTrainerMixin, build_model_card, push_to_hub

from conftest import SHARED_DATA
from test_processor import make_model, make_processor, make_sample
from test_remote_code import load_in_fresh_process_without_package


REPO_ID = "some-org/some-model"
NAMES = ["uniqueness_image", "uniqueness_text", "uniqueness_tabular", "synergy", "redundancy"]


def stats(means, stds=None, shares=None) -> dict:
    return {"mean_weight": dict(zip(NAMES, means)), "std_weight": dict(zip(NAMES, stds or [0.0] * 5)),
            "share_dominant": dict(zip(NAMES, shares or [0.2] * 5))}


# The shape of `i2moe.interpretation.InterpretationResult.summary()`.
SUMMARY = {
    "component_names": NAMES, "num_samples": 40, "grouped_by": "label",
    "overall": stats([0.1, 0.3, 0.05, 0.2, 0.35], [0.02, 0.05, 0.01, 0.04, 0.06], [0.05, 0.4, 0.0, 0.1, 0.45]),
    "per_class": {"shirt": stats([0.1, 0.4, 0.05, 0.15, 0.3]), "bag": stats([0.1, 0.2, 0.05, 0.25, 0.4])},
}
CARD_SETTINGS = dict(dataset_name="toy fashion", eval_results={"eval_accuracy": 0.8125, "eval_runtime": 1.5},
                     interpretation_summary=SUMMARY)


class CardTrainer(ModelCardTrainerMixin, Trainer):
    pass


@pytest.fixture
def model_and_processor():
    processor = make_processor()
    model = make_model(processor)
    model.config.modalities[1].tower_name_or_path = "prajjwal1/bert-tiny"  # recorded as the card's base_model
    model.config.id2label = {0: "shirt", 1: "bag", 2: "watch"}
    model.config.label2id = {label: index for index, label in model.config.id2label.items()}
    return model, processor


@pytest.fixture
def figure(tmp_path) -> Path:
    path = tmp_path / "composition.png"
    PIL.Image.new("RGB", (8, 8), "white").save(path)
    return path


@pytest.fixture
def fake_hub(monkeypatch) -> list[dict]:
    """Replaces only the calls that reach the network; returns the commits, each `{path: bytes}`."""
    commits = []

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"{constants.ENDPOINT}/{repo_id}")

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        files = {}
        for operation in operations:
            assert isinstance(operation, CommitOperationAdd), operation
            source = operation.path_or_fileobj
            files[operation.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        commits.append({"repo_id": repo_id, "message": commit_message, "files": files})
        return CommitInfo(commit_url=f"{constants.ENDPOINT}/{repo_id}/commit/{'1' * 40}", commit_message=commit_message,
                          commit_description="", oid="1" * 40)

    def validate_yaml(self, content, **kwargs):  # the Hub's server-side check of the card's metadata
        metadata = yaml.safe_load(content.split("---\n")[1])
        assert isinstance(metadata, dict) and ModelCard(content).data.to_dict() == metadata

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    # `upload_folder` (Trainer's path) posts README.md to /api/validate-yaml before committing.
    monkeypatch.setattr(HfApi, "_validate_yaml", validate_yaml)
    # With hf_xet installed, `upload_folder` (Trainer's path) streams through its own pipeline; its documented
    # switch sends it through `create_commit` like the other paths.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    return commits


def publish(path: str, model, processor, figure: Path, tmp_path: Path) -> None:
    if path == "function":
        push_to_hub(model, REPO_ID, processor=processor, figure_path=figure, **CARD_SETTINGS)
    elif path == "model.push_to_hub":
        model.push_to_hub(REPO_ID, processor=processor, figure_path=figure, **CARD_SETTINGS)
    else:
        samples = [{**make_sample(index), "labels": index % 3} for index in range(4)]
        args = TrainingArguments(output_dir=str(tmp_path / "run"), push_to_hub=True, hub_model_id=REPO_ID, max_steps=1,
                                 per_device_train_batch_size=4, save_strategy="no", report_to=[], use_cpu=True,
                                 remove_unused_columns=False, learning_rate=1e-3)
        # The processor is not the `processing_class`: Trainer would read a single `tokenizer` from it.
        trainer = CardTrainer(model=model, args=args, train_dataset=samples, eval_dataset=samples, data_collator=processor)
        trainer.train()
        trainer.evaluate()
        trainer.push_to_hub(dataset_name="toy fashion", interpretation_summary=SUMMARY, figure_path=str(figure),
                            processor=processor)


def check_repository(files: dict[str, bytes], processor: I2MoEProcessor) -> dict:
    """What every published repository must hold; returns the card's metadata."""
    code = {"configuration_i2moe.py", "modeling_i2moe.py", "fusion_i2moe.py", "towers_i2moe.py", "processing_i2moe.py"}
    sub_processors = {"image": "image/preprocessor_config.json", "text": "text/tokenizer_config.json",
                      "tabular": "tabular/preprocessor_config.json"}
    expected = {"README.md", FIGURE_NAME, "config.json", "model.safetensors", "processor_config.json", *code,
                *(sub_processors[name] for name in processor.modality_names)}
    assert expected <= set(files), sorted(expected - set(files))
    assert not [name for name in files if name.endswith((".pt", ".pth", ".pkl")) or name == "pytorch_model.bin"]
    config = json.loads(files["config.json"])
    processor_config = json.loads(files["processor_config.json"])
    auto_map = {**config["auto_map"], **processor_config["auto_map"]}
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoProcessor"}
    for reference in auto_map.values():
        assert reference.split(".")[0] + ".py" in files, reference  # every auto_map entry points to a sent file
    for name in [name for name in files if name.endswith(".py")]:  # relative imports resolve to sent files too
        for line in files[name].decode().splitlines():
            if line.startswith("from ."):
                assert line.split()[1][1:] + ".py" in files, (name, line)
    assert [m["name"] for m in processor_config["modalities"]] == processor.modality_names == \
        [m["name"] for m in config["modalities"]]
    text = files["README.md"].decode()
    assert text.startswith("---\n")
    metadata = yaml.safe_load(text.split("---\n")[1])
    assert f"]({FIGURE_NAME})" in text
    return metadata


@pytest.mark.parametrize("path", ["function", "model.push_to_hub", "Trainer"])
def test_every_publishing_path_sends_model_processor_code_card_and_figure(path, model_and_processor, figure,
                                                                       fake_hub, tmp_path):
    model, processor = model_and_processor
    publish(path, model, processor, figure, tmp_path)
    [commit] = fake_hub
    assert commit["repo_id"] == REPO_ID
    metadata = check_repository(commit["files"], processor)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "other"
    assert metadata["base_model"] == ["prajjwal1/bert-tiny"]
    assert {"i2moe", "multimodal", "image", "text", "tabular"} <= set(metadata["tags"])
    [result] = metadata["model-index"][0]["results"]
    assert result["dataset"]["name"] == "toy fashion"
    metrics = {metric["type"]: metric["value"] for metric in result["metrics"]}
    if path == "Trainer":  # the card's results are the trainer's last evaluation
        assert set(metrics) == {"loss"} and result["dataset"]["split"] == "validation"
        assert "| optimizer steps | `1` |" in commit["files"]["README.md"].decode()
    else:
        assert metrics == {"accuracy": 0.8125}  # speed figures are not results
    assert commit["files"][FIGURE_NAME] == figure.read_bytes()


def test_model_card_metadata_and_body(model_and_processor, figure):
    model, processor = model_and_processor
    model.config.modalities[1].freeze = True  # the card reads what is frozen from the config
    card = build_model_card(model, repo_id=REPO_ID, processor=processor, dataset_id="org/toy-fashion",
                            interpretation_split="test",
                            additional_results={"test, without text": {"test_accuracy": 0.5, "test_runtime": 2.0}},
                            figure_path=figure, training_args=TrainingArguments(output_dir="unused", learning_rate=3e-4,
                                                                                num_train_epochs=5, report_to=[]),
                            **CARD_SETTINGS)
    reloaded = ModelCard(str(card))  # what the Hub parses back
    assert reloaded.data.datasets == ["org/toy-fashion"] and reloaded.data.base_model_relation == "finetune"
    assert [(r.metric_type, r.metric_value, r.dataset_type) for r in reloaded.data.eval_results] == [
        ("accuracy", 0.8125, "org/toy-fashion")]
    text = card.text
    for expected in (
        "| image | image | `i2moe_lenet` | random init |",
        "| text | text | `bert` | [prajjwal1/bert-tiny](https://huggingface.co/prajjwal1/bert-tiny) |",
        "| `fusion_num_heads` | `2` |",  # transformer fusion: its settings, not the concat head's
        "| **all** (n=40), mean ± std | 0.100 ± 0.020 | 0.300 ± 0.050 | 0.050 ± 0.010 | 0.200 ± 0.040 | 0.350 ± 0.060 |",
        "| **all**, share of samples it dominates | 5.0% | 40.0% | 0.0% | 10.0% | 45.0% |",
        "| true class = bag, mean | 0.100 | 0.200 | 0.050 | 0.250 | **0.400** |",
        "| true class = shirt, mean | 0.100 | **0.400** | 0.050 | 0.150 | 0.300 |",
        "over 40 samples on the test split",
        "| metric | test | test, without text |", "| accuracy | 0.8125 | 0.5000 |", "relies most on `redundancy` (mean weight 0.350)",
        "| learning rate | `0.0003` |", "| epochs | `5` |",
        "*learned null tokens*",
        f'repo = "{REPO_ID}"', "AutoProcessor.from_pretrained(repo, trust_remote_code=True)",
        "I2MoEProcessor.from_pretrained(repo)",
        '"tabular": [0.0] * 2,  # year, men',
        '{"image": Image.open("example.jpg"), "text": "a short description"},  # no tabular: a missing modality',
    ):
        assert expected in text, expected
    assert "fusion_hidden_size" not in text and "`shirt`, `bag`, `watch`" in text
    total, text_tower = model.num_parameters(), sum(p.numel() for p in model.encoders["text"].tower.parameters())
    assert f"{total / 1e3:.1f}k in all, {(total - text_tower) / 1e3:.1f}k trained (frozen towers excluded)" in text
    assert "Frozen towers (weights and BatchNorm statistics fixed): text." in text
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(snippets) == 2
    for snippet in snippets:
        compile(snippet, "model card snippet", "exec")  # the loading snippets are valid Python


@pytest.mark.parametrize("method", ["i2moe", "dmil"])
def test_model_card_lists_the_settings_of_the_method_in_use(method):
    from conftest import make_config

    text = build_model_card(I2MoEForClassification(make_config("concat", method=method))).text
    settings = {"i2moe": "| `i2moe.lambda_int` |", "dmil": "| `dmil.latent_size` |"}
    assert settings[method] in text and settings[{"i2moe": "dmil", "dmil": "i2moe"}[method]] not in text
    assert "| `i2m2_" not in text and "fusion_num_heads" not in text
    assert ("outputs.component_weights" if method == "i2moe" else "outputs.component_weights") in text


def test_local_tower_paths_are_not_published(model_and_processor, tmp_path):
    model, _ = model_and_processor
    model.config.modalities[0].tower_name_or_path = str(tmp_path / "efficientnet-lite0")
    card = build_model_card(model)
    assert card.data.base_model == ["prajjwal1/bert-tiny"] and str(tmp_path) not in str(card)
    assert "| image | image | `i2moe_lenet` | local folder `efficientnet-lite0` |" in card.text
    card = build_model_card(model, tower_sources_overrides={"image": "timm/efficientnet_lite0.ra_in1k",
                                                            "text": "converted from a TF checkpoint"})
    assert card.data.base_model == ["timm/efficientnet_lite0.ra_in1k"] and "| converted from a TF checkpoint |" in card.text


def test_model_card_errors_name_the_problem(model_and_processor, fake_hub):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="eval_results need `dataset_name`"):
        build_model_card(model, eval_results={"accuracy": 0.5})
    with pytest.raises(ValueError, match=r"missing \['overall'\]"):
        build_model_card(model, interpretation_summary={"component_names": NAMES})
    with pytest.raises(ValueError, match=r"processor modalities \['text', 'image'\] do not match"):
        push_to_hub(model, REPO_ID, processor=I2MoEProcessor({"text": processor.processors["text"],
                                                               "image": processor.processors["image"]}))
    assert fake_hub == []


def write_hub_cache(files: dict[str, bytes], cache_dir: Path, repo_id: str) -> str:
    """Lay the files out as `huggingface_hub` caches a download: content-addressed blobs, a snapshot per
    commit made of relative symlinks to them, and `refs/main` naming the commit. Returns the commit."""
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(b"".join(hashlib.sha1(files[name]).digest() for name in sorted(files))).hexdigest()
    (repo_dir / "blobs").mkdir(parents=True)
    for name, content in files.items():
        # The Hub's ETag, and so the blob's name: sha256 for LFS files, the git blob sha1 for the others.
        lfs = name.endswith((".safetensors", ".png"))
        blob = hashlib.sha256(content).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        (repo_dir / "blobs" / blob).write_bytes(content)
        link = repo_dir / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo_dir / "blobs" / blob, link.parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return commit


def test_published_repository_loads_without_the_package_from_a_folder_and_the_hub_cache(
    model_and_processor, figure, fake_hub, tmp_path
):
    model, processor = model_and_processor
    push_to_hub(model, REPO_ID, processor=processor, figure_path=figure, **CARD_SETTINGS)
    files = fake_hub[0]["files"]
    folder = tmp_path / "downloaded"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    cache = tmp_path / "hub_cache"
    commit = write_hub_cache(files, cache, REPO_ID)
    [cached] = scan_cache_dir(cache).repos  # the Hub client reads the layout as one repo at one commit
    assert cached.repo_id == REPO_ID and [r.commit_hash for r in cached.revisions] == [commit]
    assert {f.file_name for f in next(iter(cached.revisions)).files} == {Path(name).name for name in files}

    image_path = tmp_path / "product.png"
    make_sample(0)["image"].save(image_path)
    samples = [{"image": str(image_path), "text": "blue shirt men", "tabular": [2012.0, 1.0]},
               {"text": "red bag women", "tabular": [2013.0, 0.0]},  # image missing
               {"image": str(image_path)}]
    with torch.no_grad():
        expected = model(**processor(samples)).logits

    # Then the card's own "without the package" snippet, as written, against the cached repository.
    snippet = re.search(r"```python\n(.*?)```", files["README.md"].decode(), flags=re.DOTALL).group(1)
    make_sample(1)["image"].save(tmp_path / "example.jpg")
    *results, snippet_result = load_in_fresh_process_without_package(
        [folder, REPO_ID], tmp_path, samples=samples, env={"HF_HUB_CACHE": str(cache)}, snippet=snippet)
    assert len(snippet_result["snippet_labels"]) == 2  # one label per sample of the snippet
    for result in results:
        assert result["class"].startswith("transformers_modules.") and result["class"].endswith(".I2MoEForClassification")
        assert result["processor_class"].endswith(".I2MoEProcessor")
        torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-6)

    # With the package installed, the same cached repository loads the package's own classes.
    loaded = AutoModel.from_pretrained(REPO_ID, cache_dir=cache, local_files_only=True).eval()
    loaded_processor = AutoProcessor.from_pretrained(REPO_ID, cache_dir=cache, local_files_only=True)
    assert type(loaded) is I2MoEForClassification and type(loaded_processor) is I2MoEProcessor
    with torch.no_grad():
        torch.testing.assert_close(loaded(**loaded_processor(samples)).logits, expected, rtol=0, atol=0)
    assert np.isfinite(expected.numpy()).all()


@pytest.mark.skipif(not (SHARED_DATA / "fashion-products" / "products.csv").exists(),
                    reason="fashion products data not available")
def test_example_script_publishes_model_processor_and_card_with_the_composition(fake_hub, tmp_path):
    """examples/run_classification.py --method i2moe --push_to_hub on real fashion products, tiny towers."""
    from transformers import BertModel, ViTConfig, ViTImageProcessor, ViTModel

    from conftest import tiny_bert_config
    from test_fashion import _run_classification_module
    from test_processor import make_tokenizer

    ViTModel(ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)).save_pretrained(tmp_path / "image")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "image")
    BertModel(tiny_bert_config()).save_pretrained(tmp_path / "text")
    make_tokenizer().save_pretrained(tmp_path / "text")
    _run_classification_module().main([
        "--data_dir", str(SHARED_DATA), "--cache_dir", str(tmp_path / "cache"), "--target", "masterCategory",
        "--image_model", str(tmp_path / "image"), "--text_model", str(tmp_path / "text"), "--method", "i2moe",
        "--output_dir", str(tmp_path / "run"), "--do_train", "--do_predict", "--max_train_samples", "16",
        "--max_test_samples", "12", "--max_steps", "1", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "12", "--eval_missing_modality", "image", "--hidden_size", "32",
        "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true",
        "--push_to_hub", "true", "--hub_model_id", REPO_ID,
    ])
    files = fake_hub[-1]["files"]  # Trainer also pushes when the script saves the model; the last push is final
    metadata = check_repository(files, I2MoEProcessor.from_pretrained(tmp_path / "run"))
    assert {"i2moe", "image", "text"} <= set(metadata["tags"]) and "interpretation_test.json" in files
    [result] = metadata["model-index"][0]["results"]
    assert result["dataset"] == {"name": "Fashion Product Images (small)", "type": "Fashion Product Images (small)",
                                 "split": "test"}
    text = files["README.md"].decode()
    summary = json.loads(files["interpretation_test.json"])["summary"]
    assert summary["num_samples"] == 12 and summary["component_names"] == [
        "uniqueness_image", "uniqueness_text", "redundancy", "synergy"]
    for expected in ("## Interaction composition", "over 12 samples on the test split", "| metric | test | test, without image |",
                     f"![Distribution of each interaction type's weight over the samples]({FIGURE_NAME})",
                     "| image | image | `vit` | local folder `image` |", "| learning rate |"):
        assert expected in text, expected
    assert str(tmp_path) not in text
