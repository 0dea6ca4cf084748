"""i2moe: interaction-aware multimodal classifiers (I2MoE, I2M2, DMIL) for the Hugging Face stack."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoProcessor

from .configuration_i2moe import (
    DMILConfig, I2M2Config, I2MoEConfig, I2MoEExpertsConfig, I2MoEFeaturesConfig, I2MoELeNetConfig, ModalityConfig,
)
from . import hub
from .encoders_i2moe import ModalityEncoder
from .fusion_i2moe import InteractionOutput, TokenLayout, build_fusion, register_fusion
from .modeling_i2moe import I2MoEForClassification, I2MoEOutput, I2MoEPreTrainedModel
from .processing_i2moe import I2MoEFeatureNormalizer, I2MoEProcessor
from .towers_efficientnet_lite import (
    I2MoEEfficientNetLiteConfig,
    I2MoEEfficientNetLiteForImageClassification,
    I2MoEEfficientNetLiteModel,
)
from .registry_i2moe import FUSIONS, INTERACTIONS, POOLERS, TOWERS
from .towers_i2moe import I2MoEFeaturesModel, I2MoELeNetModel


__version__ = "0.1.0"

for _model_class in (I2MoEForClassification, *(TOWERS.get(name) for name in TOWERS.names())):
    _config_class = _model_class.config_class
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    # `save_pretrained` then writes `auto_map` and copies the code files, so saved models load with
    # `trust_remote_code=True` where this package is not installed.
    _config_class.register_for_auto_class()
    _model_class.register_for_auto_class("AutoModel")

AutoModelForImageClassification.register(
    I2MoEEfficientNetLiteConfig, I2MoEEfficientNetLiteForImageClassification, exist_ok=True
)
I2MoEEfficientNetLiteForImageClassification.register_for_auto_class("AutoModelForImageClassification")
AutoProcessor.register(I2MoEConfig, I2MoEProcessor, exist_ok=True)
# `model.push_to_hub(repo, processor=...)` publishes model, processor and model card together.
I2MoEForClassification.hub_publisher = staticmethod(hub.push_to_hub)
I2MoEProcessor.register_for_auto_class()

__all__ = [
    "DMILConfig",
    "FUSIONS",
    "I2M2Config",
    "INTERACTIONS",
    "I2MoEConfig",
    "I2MoEExpertsConfig",
    "I2MoEEfficientNetLiteConfig",
    "I2MoEEfficientNetLiteForImageClassification",
    "I2MoEEfficientNetLiteModel",
    "I2MoEFeatureNormalizer",
    "I2MoEFeaturesConfig",
    "I2MoEFeaturesModel",
    "I2MoEForClassification",
    "I2MoELeNetConfig",
    "I2MoELeNetModel",
    "I2MoEOutput",
    "I2MoEPreTrainedModel",
    "I2MoEProcessor",
    "InteractionOutput",
    "ModalityConfig",
    "ModalityEncoder",
    "POOLERS",
    "TOWERS",
    "TokenLayout",
    "build_fusion",
    "register_fusion",
]
