"""One registration mechanism for the model's named parts, in the spirit of timm's `register_model`.

Each `Registry` maps a name to a class or function. The built-in entries are *declared* here by
name with the sibling file and attribute that define them, so the configuration validates a name
without importing any torch module; the defining file registers the object itself with the
registry's decorator when it is imported, and `get` imports that file on first use. A user's own
backbone or interaction part is added with the same decorator and is then accepted by the config
and picked up by the parametrised tests.

This file travels with saved models as Hub remote code: it imports only the standard library.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry:
    """Names of one kind of part (`"fusion"`, `"method"`, `"pooling"`, `"tower"`) -> objects.

    Example:

    ```python
    >>> from i2moe.registry_i2moe import FUSIONS
    >>> FUSIONS.names()
    ['concat', 'lrtf', 'transformer']
    >>> FUSIONS.get("concat").__name__
    'ConcatFusion'
    ```
    """

    def __init__(self, kind: str, builtin: dict[str, str]):
        self.kind = kind
        self._declared = dict(builtin)  # name -> sibling module that registers it on import
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator adding `obj` under `name`; a name can be registered once."""

        def decorator(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (as {self._entries[name]!r})")
            self._entries[name] = obj
            return obj

        return decorator

    def names(self) -> list[str]:
        return sorted(set(self._declared) | set(self._entries))

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._declared)

    def get(self, name: str):
        if name not in self._entries and name in self._declared:
            importlib.import_module(f".{self._declared[name]}", __package__)
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {self.names()}")
        return self._entries[name]

    def check(self, name, field: str, owner: str = "I2MoEConfig") -> None:
        """Raise the error a config gives for an unregistered name in `field`."""
        if name not in self:
            raise ValueError(f"{owner}: unknown `{field}` {name!r}; expected one of {self.names()}")


# Fusion backbones: constructor `(config, layout, num_stacks)`, tokens `(S or 1, N, T, d)` -> logits `(S, N, C)`.
FUSIONS = Registry("fusion", {"concat": "fusion_i2moe", "transformer": "fusion_i2moe", "lrtf": "fusion_i2moe"})
# Interaction parts (`config.method`): constructor `(config, layout)`, forward
# `(tokens (B, T, d), present (B, M), null_tokens (T, d), labels, noise)` -> `InteractionOutput`
# (`noise`: a `noise_i2moe.CounterNoise` or None, for whatever the part draws in training).
INTERACTIONS = Registry("method", {"vanilla": "fusion_i2moe", "i2moe": "experts_i2moe", "dmil": "dmil_i2moe"})
# Token poolers (`ModalityConfig.pooling`): `(sequence (B, L, h), mask (B, L) or None, pooler_output) -> (B, h)`.
POOLERS = Registry("pooling", {"cls": "encoders_i2moe", "mean": "encoders_i2moe", "max": "encoders_i2moe",
                               "pooler": "encoders_i2moe"})
# Built-in towers by their config's `model_type`: the `PreTrainedModel` class (its `config_class` is the config).
TOWERS = Registry("tower", {"i2moe_features": "towers_i2moe", "i2moe_lenet": "towers_i2moe",
                            "i2moe_efficientnet_lite": "towers_efficientnet_lite"})


__all__ = ["FUSIONS", "INTERACTIONS", "POOLERS", "Registry", "TOWERS"]
