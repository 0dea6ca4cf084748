"""DMIL: decomposition-based multimodal interaction learning (the interaction part for method="dmil").

Each modality's token v_m (its tokens mean-pooled, width d) is decomposed in two levels of
variational bottlenecks (VIBs), and the prediction is a gated sum of one head per component.

Level 1, intra-modality, per modality m: a task-relevant part M_m (with a unimodal head) and an
inter part N_m (raw material for synergy), trained to reconstruct v_m from [M_m, N_m].

Level 2, consistency, on the means of M_m and N_m:
- redundancy R = VIB(concat_m mu(M_m)), aligned with q(R | M_m) for every m;
- uniqueness U_m = VIB(mu(M_m)), trained so that [R, U_m] reconstructs mu(M_m);
- synergy S = MLP([N_1..N_M, N_i * N_j for i < j]) (the products make XOR-like synergy linearly
  separable).

Components c in (U_1..U_M, R, S) each get a linear head; a gate MLP on all components gives
softmax weights g and the prediction `sum_c g_c * logits_c`. With `config.dmil.full_decomposition=False`
(the default for more than two modalities, the setting the paper validated) level 2 is skipped and
the components are the level-1 parts: (M_1..M_M, S).

Per-modality weights are stacked along a leading axis and run as batched matmuls (`StackedLinear`),
so the part costs a handful of kernels whatever the number of modalities.

The training stage (`config.dmil.stage`) picks the loss composition; the stage schedule itself
(freezing, fresh optimisers, best checkpoints) lives in `i2moe.dmil_training`.

This file travels with saved models as Hub remote code: it imports only torch, transformers and
its sibling files.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .fusion_i2moe import (
    InteractionOutput, ModalityMean, StackedLinear, StackedMLPHead, TokenLayout, interaction_component_names,
)
from .noise_i2moe import standard_normal
from .registry_i2moe import INTERACTIONS


def gaussian_kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) in closed form, averaged over every element
    (batch and latent dimensions; a leading stack axis is averaged too)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


def gaussian_kl(mean_p: torch.Tensor, logvar_p: torch.Tensor, mean_q: torch.Tensor, logvar_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) between diagonal Gaussians in closed form, averaged over every element."""
    return 0.5 * (logvar_q - logvar_p + (logvar_p.exp() + (mean_p - mean_q).square()) / logvar_q.exp() - 1.0).mean()


class DMILLinear(StackedLinear):
    """`StackedLinear` initialised with fan-in scaling (std 1/sqrt(in), as torch's `nn.Linear`).

    A VIB's training sample adds unit-variance noise at initialisation; means from weights at
    `initializer_range` (0.02) would start buried under it and the heads would see noise.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # VIB outputs are float32 (exp of the log-variance); cast back for bf16/fp16 weights.
        return super().forward(inputs.to(self.weight.dtype))

    def init_parameters(self, std: float) -> None:
        init.normal_(self.weight, mean=0.0, std=self.weight.shape[1] ** -0.5)
        init.zeros_(self.bias)


class StackedVIB(nn.Module):
    """S variational bottlenecks as one batched matmul: `Linear(in -> 2 * latent)` -> (mean, logvar).

    The sample is `mean + exp(logvar / 2) * eps` in training and `mean` in evaluation, so
    inference is deterministic.
    """

    def __init__(self, num_stacks: int, in_features: int, latent_size: int, stream: int):
        super().__init__()
        self.linear = DMILLinear(num_stacks, in_features, 2 * latent_size)
        self.stream = stream  # which of a training step's per-sample noise streams it samples from

    def forward(self, inputs: torch.Tensor, noise=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.linear(inputs).float().chunk(2, dim=-1)
        # Bound the log-variance: exp() of an unbounded logvar overflows in bf16/fp16 and in early steps.
        logvar = logvar.clamp(-10.0, 10.0)
        if not self.training:
            return mean, mean, logvar
        sample = mean + standard_normal(noise, mean, self.stream, batch_dim=1) * (0.5 * logvar).exp()
        return sample, mean, logvar


class DMILIntraModality(nn.Module):
    """Level 1 for all M modalities at once: VIBs for M_m and N_m, the decoder [M_m, N_m] -> v_m
    (2L -> d/2 -> d) and the unimodal head on M_m."""

    def __init__(self, config, num_modalities: int):
        super().__init__()
        hidden, latent = config.hidden_size, config.dmil.latent_size
        self.task_vib = StackedVIB(num_modalities, hidden, latent, stream=3)
        self.inter_vib = StackedVIB(num_modalities, hidden, latent, stream=4)
        self.decoder = StackedMLPHead(
            num_modalities, 2 * latent, max(hidden // 2, 1), hidden, config.dropout, linear=DMILLinear
        )
        self.head = DMILLinear(num_modalities, latent, config.num_labels)

    def forward(self, pooled: torch.Tensor, noise=None) -> dict[str, torch.Tensor]:
        """`pooled` (M, B, d) -> the parts, their Gaussian parameters, unimodal logits (M, B, C)
        and the losses that do not need labels."""
        task, task_mean, task_logvar = self.task_vib(pooled, noise)
        inter, inter_mean, inter_logvar = self.inter_vib(pooled, noise)
        reconstruction = self.decoder(torch.cat([task, inter], dim=-1))
        return {
            "task": task, "task_mean": task_mean, "inter": inter, "inter_mean": inter_mean,
            "unimodal_logits": self.head(task),
            # Each term is summed over modalities (a stack axis averaged, times M).
            "kl_intra": pooled.shape[0] * (
                gaussian_kl_standard_normal(task_mean, task_logvar) + gaussian_kl_standard_normal(inter_mean, inter_logvar)
            ),
            "reconstruction_intra": pooled.shape[0] * F.mse_loss(reconstruction.float(), pooled.float()),
        }


class DMILConsistency(nn.Module):
    """Level 2: redundancy R (with alignment to q(R | M_m)) and uniqueness U_m (with the decoder
    [R, U_m] -> mu(M_m)), from the means of the M_m."""

    def __init__(self, config, num_modalities: int):
        super().__init__()
        latent = config.dmil.latent_size
        self.num_modalities = num_modalities
        self.redundancy_vib = StackedVIB(1, num_modalities * latent, latent, stream=5)
        # Per modality, one matmul gives both q(R | M_m) (the alignment target) and U_m.
        self.per_modality_vib = StackedVIB(num_modalities, latent, 2 * latent, stream=6)
        self.decoder = StackedMLPHead(num_modalities, 2 * latent, latent, latent, config.dropout, linear=DMILLinear)

    def forward(self, task_mean: torch.Tensor, noise=None) -> dict[str, torch.Tensor]:
        """`task_mean` (M, B, L) -> R (B, L), U (M, B, L) and the level-2 losses."""
        num_modalities, batch, latent = task_mean.shape
        redundancy, redundancy_mean, redundancy_logvar = self.redundancy_vib(
            task_mean.transpose(0, 1).reshape(1, batch, num_modalities * latent), noise
        )
        sample, mean, logvar = self.per_modality_vib(task_mean, noise)
        conditional_mean, unique_mean = mean.chunk(2, dim=-1)
        conditional_logvar, unique_logvar = logvar.chunk(2, dim=-1)
        unique = sample[..., latent:]
        decoded = self.decoder(torch.cat([redundancy.expand(num_modalities, -1, -1), unique], dim=-1))
        return {
            "redundancy": redundancy[0], "unique": unique,
            "kl_consistency": gaussian_kl_standard_normal(redundancy_mean, redundancy_logvar)
            + num_modalities * gaussian_kl_standard_normal(unique_mean, unique_logvar),
            "alignment": num_modalities * gaussian_kl(
                redundancy_mean.expand(num_modalities, -1, -1), redundancy_logvar.expand(num_modalities, -1, -1),
                conditional_mean, conditional_logvar,
            ),
            "reconstruction_consistency": num_modalities * F.mse_loss(decoded.float(), task_mean.float()),
        }


class DMILSynergy(nn.Module):
    """S = MLP([N_1, ..., N_M, N_i * N_j for all pairs i < j]) -> (B, L)."""

    def __init__(self, config, num_modalities: int):
        super().__init__()
        latent = config.dmil.latent_size
        pairs = list(itertools.combinations(range(num_modalities), 2))
        # Python lists, not buffers: non-persistent integer buffers are left uninitialised when
        # `from_pretrained` builds the model on the meta device (found by tests/test_architecture.py).
        self.pair_left, self.pair_right = [i for i, _ in pairs], [j for _, j in pairs]
        self.mlp = StackedMLPHead(
            1, (num_modalities + len(pairs)) * latent, config.hidden_size, latent, config.dropout, linear=DMILLinear
        )

    def forward(self, inter: torch.Tensor) -> torch.Tensor:
        """`inter` (M, B, L) -> S (B, L)."""
        products = inter[self.pair_left] * inter[self.pair_right]  # (P, B, L), all pairs in one kernel
        features = torch.cat([inter, products], dim=0).transpose(0, 1).flatten(1)
        return self.mlp(features[None])[0]


@INTERACTIONS.register("dmil")
class DMILInteraction(nn.Module):
    r"""
    The DMIL interaction part: two-level decomposition, one head per component and a gate.

    Outputs (an `InteractionOutput`): `logits`, `component_logits` (B, K, C) and `component_weights`
    (B, K, the gate) in the order of `component_names`, `unimodal_logits` (B, M, C) from the level-1
    heads, `loss_terms` (every loss term, unweighted) and `interaction_loss` (the weighted sum the
    stage adds to the task loss).

    What `config.dmil.stage` does (the model adds the task cross-entropy on `logits` in every stage):
    1. Only level 1 runs. `logits` is the mean of the unimodal heads' log-probabilities, *detached*,
       so the task loss adds its value but no gradient and the gradient is exactly
       `L1 = sum_m [CE(head(M_m)) + kl_weight * (KL(M_m) + KL(N_m)) + reconstruction_weight * Rec_m]`;
       the validation accuracy of stage 1 is that of the unimodal-head ensemble.
    2. `CE(Y) + stage2_component_weight * sum_c CE(y_c)` + level-2 KL, alignment and reconstruction
       (level 1 is frozen by the schedule, so its terms would be constants and are left out).
    3. `CE(Y) + stage3_unimodal_weight * sum_m CE(M_m) + stage3_component_weight * sum_c CE(y_c)`
       + every KL, alignment and reconstruction term.

    Example:

    ```python
    >>> import torch
    >>> from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
    >>> config = I2MoEConfig(
    ...     modalities=[{"name": "image", "tower": I2MoEFeaturesConfig(input_size=8)},
    ...                 {"name": "audio", "tower": I2MoEFeaturesConfig(input_size=4)}],
    ...     hidden_size=32, method="dmil", dmil={"stage": 3}, num_labels=3,
    ... )
    >>> model = I2MoEForClassification(config).eval()
    >>> model.interaction.component_names
    ['uniqueness_image', 'uniqueness_audio', 'redundancy', 'synergy']
    >>> out = model(image_features=torch.randn(2, 8), audio_features=torch.randn(2, 4))
    >>> out.component_weights.shape, out.component_logits.shape
    (torch.Size([2, 4]), torch.Size([2, 4, 3]))
    ```
    """

    def __init__(self, config, layout: TokenLayout):
        super().__init__()
        self.config = config  # `config.dmil` is read at every call: the schedule changes its `stage`
        self.modality_names = list(layout.names)
        num_modalities, latent = layout.num_modalities, config.dmil.latent_size
        self.full_decomposition = config.dmil.full_decomposition
        self.modality_mean = ModalityMean(layout)
        self.intra = DMILIntraModality(config, num_modalities)
        self.consistency = DMILConsistency(config, num_modalities) if self.full_decomposition else None
        self.synergy = DMILSynergy(config, num_modalities)
        num_components = len(self.component_names)
        self.component_heads = DMILLinear(num_components, latent, config.num_labels)
        self.gate = StackedMLPHead(
            1, num_components * latent, config.hidden_size, num_components, config.dropout, linear=DMILLinear
        )

    @property
    def component_names(self) -> list[str]:
        """Names of the components, in the order of `component_logits` and `component_weights`."""
        if self.full_decomposition:
            return interaction_component_names(self.modality_names)
        return [f"intra_{name}" for name in self.modality_names] + ["synergy"]

    @property
    def level1_modules(self) -> list[nn.Module]:
        """The level-1 modules, which stage 2 freezes (with the towers)."""
        return [self.intra]

    def forward(self, tokens: torch.Tensor, present: torch.Tensor, null_tokens: torch.Tensor,
                labels: torch.Tensor | None = None, noise=None) -> InteractionOutput:
        stage = self.config.dmil.stage
        pooled = self.modality_mean(tokens).transpose(0, 1)  # (M, B, d)
        intra = self.intra(pooled, noise)
        unimodal_logits = intra["unimodal_logits"].transpose(0, 1)  # (B, M, C)
        terms = {"kl_intra": intra["kl_intra"], "reconstruction_intra": intra["reconstruction_intra"]}
        outputs = {"unimodal_logits": unimodal_logits}
        if stage == 1:
            logits = unimodal_logits.float().log_softmax(-1).mean(1).detach()
        else:
            components = self._components(intra, terms, noise)  # (K, B, L)
            component_logits = self.component_heads(components).transpose(0, 1)  # (B, K, C)
            gate_weights = self.gate(components.transpose(0, 1).flatten(1)[None])[0].float().softmax(-1)
            logits = (gate_weights[..., None] * component_logits.float()).sum(1)
            outputs.update(component_logits=component_logits, component_weights=gate_weights)
        if labels is None:
            return InteractionOutput(logits=logits, **outputs)
        terms["ce_unimodal"] = _summed_cross_entropy(unimodal_logits, labels)
        if stage > 1:
            terms["ce_components"] = _summed_cross_entropy(outputs["component_logits"], labels)
        return InteractionOutput(logits=logits, interaction_loss=self._stage_loss(stage, terms), loss_terms=terms, **outputs)

    def _components(self, intra: dict[str, torch.Tensor], terms: dict[str, torch.Tensor], noise) -> torch.Tensor:
        # The synergy reads the means of N_m, as level 2 reads the means of M_m: a sampled N_m buried the
        # symbols in unit noise and pure synergy stayed at chance (docs/dmil.md, "Synergy on the means").
        synergy = self.synergy(intra["inter_mean"])
        if not self.full_decomposition:
            return torch.cat([intra["task_mean"], synergy[None]], dim=0)
        consistency = self.consistency(intra["task_mean"], noise)
        for name in ("kl_consistency", "alignment", "reconstruction_consistency"):
            terms[name] = consistency[name]
        return torch.cat([consistency["unique"], consistency["redundancy"][None], synergy[None]], dim=0)

    def _stage_loss(self, stage: int, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        settings = self.config.dmil
        zero = terms["kl_intra"].new_zeros(())
        level2 = (
            settings.kl_weight * terms.get("kl_consistency", zero)
            + settings.alignment_weight * terms.get("alignment", zero)
            + settings.reconstruction_weight * terms.get("reconstruction_consistency", zero)
        )
        level1 = settings.kl_weight * terms["kl_intra"] + settings.reconstruction_weight * terms["reconstruction_intra"]
        if stage == 1:
            return terms["ce_unimodal"] + level1
        if stage == 2:
            return settings.stage2_component_weight * terms["ce_components"] + level2
        return (
            settings.stage3_unimodal_weight * terms["ce_unimodal"]
            + settings.stage3_component_weight * terms["ce_components"]
            + level1 + level2
        )


def _summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`sum_k CE(logits[:, k], labels)` for per-head logits (B, K, C)."""
    num_heads = logits.shape[1]
    return num_heads * F.cross_entropy(logits.float().flatten(0, 1), labels.repeat_interleave(num_heads))


__all__ = ["DMILInteraction", "gaussian_kl", "gaussian_kl_standard_normal"]
