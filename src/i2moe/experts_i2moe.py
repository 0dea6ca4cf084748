"""I2MoE interaction experts: K = M + 2 fusion backbones trained by weak supervision, mixed per sample.

Experts, in order (`interaction_component_names`): one *uniqueness* expert per modality, one
*redundancy* expert, one *synergy* expert. Each is a full copy of the configured fusion backbone with its own head; all K run as one
stacked backbone (`num_stacks=K`), so they cost a few batched kernels, not K passes.

Training step (`self.training`):

1. The V = M + 1 input variants, clean and "modality j perturbed" for every j, are built with one
   `torch.where` over a fixed `(V, T)` token mask and flattened along the batch: `(V·B, T, d)`.
2. `run_experts` gives `(K, V·B, C)`: every expert on every variant. The rows enter the stacked
   backbone (`num_stacks=K`, the input's leading 1 broadcast to the K experts, not copied) in one
   call, or in chunks of rows (`config.i2moe.execution`): one call is fewest kernel launches (GPUs),
   chunks keep each call's activations in cache (CPUs); the numbers are the same.
3. All K interaction losses come from a handful of tensor ops on that result
   (`interaction_loss_terms`).

With `perturbation_fraction` f < 1 the perturbed variants cover a random ceil(f·B) of the rows
(the clean pass still covers all B). Inference (`not self.training`) runs only the clean pass.

This file travels with saved models as Hub remote code: it imports only torch and its siblings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configuration_i2moe import DEFAULT_LABEL_GUIDANCE_WEIGHT
from .fusion_i2moe import InteractionOutput, ModalityMean, TokenLayout, build_fusion, interaction_component_names
from .noise_i2moe import standard_normal
from .registry_i2moe import INTERACTIONS


# Activations per expert call that chunked execution keeps below, on CPU: measured best on a 2-core
# EPYC (2 MiB L2 per core, 32 MiB L3) by `benchmarks/i2moe_vs_reference.py --chunk-sweep`.
CPU_CACHE_BUDGET_BYTES = 8 * 2**20


def activation_elements_per_row(config, layout: TokenLayout) -> int:
    """The widest activation one input row produces in one expert: T tokens x the MLP width for
    transformer fusion, one hidden vector for the pooled backbones (concat, LRTF)."""
    if config.fusion == "transformer":
        return layout.total_tokens * max(config.hidden_size, config.fusion_intermediate_size)
    return max(config.hidden_size * layout.num_modalities, config.fusion_hidden_size or 0)


class ReweightingModel(nn.Module):
    """MLP on the clean modality embeddings (mean-pooled per modality, concatenated) -> K expert
    weights `softmax(MLP(z) / temperature)`. `num_layers` counts the linear layers."""

    def __init__(self, in_features: int, num_experts: int, hidden_size: int, num_layers: int, dropout: float,
                 temperature: float):
        super().__init__()
        widths = [in_features] + [hidden_size] * (num_layers - 1)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(), nn.Dropout(dropout)]
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(widths[-1], num_experts)
        self.temperature = temperature

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # `(h W^T + b) / temperature` as one kernel: addmm's alpha and beta scale both terms.
        scale = 1.0 / self.temperature
        logits = torch.addmm(self.output.bias, self.hidden(features), self.output.weight.T, beta=scale, alpha=scale)
        # Softmax in float32: the weights are reported and must sum to 1 under bf16 autocast too.
        return torch.softmax(logits.float(), dim=-1)


@INTERACTIONS.register("i2moe")
class I2MoEInteraction(nn.Module):
    r"""
    The I2MoE interaction part (`config.method == "i2moe"`): K = M + 2 interaction experts over any
    registered fusion backbone, a reweighting model, and the weak-supervision interaction loss.

    Forward `(tokens (B, T, d), present (B, M) bool, null_tokens (T, d), labels)` returns an
    `InteractionOutput` whose `logits` are `sum_k w_k · y_k`, with `component_logits` `(B, K, C)`
    (each expert on the clean inputs), `component_weights` `(B, K)` (the reweighting model) and, in
    training mode, `interaction_loss` `config.i2moe.lambda_int · L_int` and `loss_terms` (one term
    per expert, named like `component_names`, plus `"interaction"`: `L_int` itself).

    A modality already missing in a row (`present` False) is not a meaningful perturbation there
    (it already holds its null tokens), so those (row, modality) pairs are masked out of every loss
    term that uses them; for the uniqueness expert of that modality, the whole row drops out, since
    its negative is undefined.

    Example:

    ```python
    >>> import torch
    >>> from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
    >>> config = I2MoEConfig(
    ...     modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(input_size=8)},
    ...                 {"name": "b", "tower": I2MoEFeaturesConfig(input_size=4)}],
    ...     hidden_size=32, fusion="transformer", method="i2moe", num_labels=3,
    ... )
    >>> model = I2MoEForClassification(config)
    >>> out = model(a_features=torch.randn(2, 8), b_features=torch.randn(2, 4), labels=torch.tensor([0, 2]))
    >>> out.component_logits.shape, out.component_weights.shape
    (torch.Size([2, 4, 3]), torch.Size([2, 4]))
    >>> model.interaction.component_names
    ['uniqueness_a', 'uniqueness_b', 'redundancy', 'synergy']
    ```
    """

    def __init__(self, config, layout: TokenLayout):
        super().__init__()
        num_modalities = layout.num_modalities
        self.num_modalities = num_modalities
        self.num_experts = num_experts = num_modalities + 2
        settings = config.i2moe
        self.component_names = interaction_component_names(layout.names)
        self.perturbation = settings.perturbation
        self.margin = settings.margin
        self.uniqueness_distance = settings.uniqueness_distance
        self.lambda_int = settings.lambda_int
        self.expert_loss_weight = settings.expert_loss_weight
        # The config's settings, not a copy: an unset `label_guidance_weight` is resolved into them.
        self.settings = settings
        self.balance_weight = settings.balance_weight
        self.warmup_steps = settings.reweight_warmup_steps
        # Training forward passes seen, for the reweighting warm-up: a Python int, not a buffer
        # (`from_pretrained` leaves non-persistent buffers uninitialised); a reloaded model starts again.
        self.training_steps = 0
        self.regression = config.problem_type == "regression"
        self.num_labels = config.num_labels
        self.execution, self.chunk_rows = settings.execution, settings.chunk_rows
        self.checkpoint_experts = settings.checkpoint_experts
        self.perturbation_fraction = settings.perturbation_fraction
        self.activation_elements_per_row = activation_elements_per_row(config, layout)
        self.experts = build_fusion(config, layout, num_stacks=num_experts)
        self.modality_mean = ModalityMean(layout)
        self.reweighting = ReweightingModel(
            num_modalities * config.hidden_size, num_experts, settings.reweight_hidden_size,
            settings.reweight_num_layers, settings.reweight_dropout, settings.temperature,
        )
        self.layout = layout
        for name, value in self._constants().items():  # buffers, so they follow `.to(device)`
            self.register_buffer(name, value, persistent=False)

    def init_parameters(self, std: float) -> None:
        """Called by the model's `_init_weights`, also after `from_pretrained`, which builds the model on
        the meta device and leaves non-persistent buffers uninitialised: the constants are set again."""
        with torch.no_grad():
            for name, value in self._constants().items():
                getattr(self, name).copy_(value)

    def _constants(self) -> dict[str, torch.Tensor]:
        """The variant mask and the fixed matrices of `interaction_loss_terms`."""
        num_modalities, num_experts, layout = self.num_modalities, self.num_experts, self.layout
        # Row 0: the clean input; row j + 1: modality j's tokens replaced. Shape (V, 1, T, 1).
        variant_mask = torch.zeros(num_modalities + 1, layout.total_tokens, dtype=torch.bool)
        for index in range(num_modalities):
            variant_mask[index + 1, layout.token_slice(index)] = True
        # Which (expert, perturbed modality j) pairs enter each expert's mean: uniqueness expert i
        # averages over its positives j != i; synergy and redundancy over every j. Shape (K, M, 1).
        pair_weights = torch.ones(num_experts, num_modalities)
        pair_weights[:num_modalities].fill_diagonal_(0.0)
        # Row j: variant j + 1 minus the clean variant 0. Shape (M, V).
        difference = torch.cat([-torch.ones(num_modalities, 1), torch.eye(num_modalities)], dim=1)
        # Uniqueness expert i maps distances d_j to d_j - d_i (the matrix I - 1 e_i^T); the other
        # experts read no triplet (zeros). Shape (K, M, M).
        negative = torch.zeros(num_experts, num_modalities, num_modalities)
        negative[:num_modalities] = torch.eye(num_modalities) - torch.eye(num_modalities)[:, None, :]
        # Each expert's own modality's presence (uniqueness) or 1 (synergy, redundancy), as the
        # affine map `own_select @ present + own_offset`.
        own_select = torch.zeros(num_experts, num_modalities)
        own_select[:num_modalities] = torch.eye(num_modalities)
        # Which candidate each expert's loss reads, as weights (K, 1, 2H, 1) over the candidates
        # [triplet (H halves), similarity input (H halves)], plus a constant per expert. Halves:
        # raw and unit-normalised logits (H = 2) for classification, raw (H = 1) for regression.
        # Uniqueness: the triplet of the raw half, or of the unit half (`uniqueness_distance`).
        # Classification: cos = 1 - sq/2 on the unit half: redundancy sq/2, synergy 1 - sq/2.
        # Regression: sim = exp(-sq) on the raw half: redundancy 1 - sim, synergy sim.
        redundancy, synergy = self.component_names.index("redundancy"), self.component_names.index("synergy")
        halves = 1 if self.regression else 2
        routing = torch.zeros(num_experts, 1, 2 * halves, 1)
        routing[:num_modalities, 0, 1 if self.uniqueness_distance == "normalized" else 0] = 1.0
        routing[redundancy, 0, -1], routing[synergy, 0, -1] = (-1.0, 1.0) if self.regression else (0.5, -0.5)
        offset = torch.zeros(num_experts)
        offset[redundancy if self.regression else synergy] = 1.0
        is_synergy = torch.zeros(num_experts, 1, 1, dtype=torch.bool)
        is_synergy[synergy] = True
        return {
            "is_synergy": is_synergy, "negated_uniqueness": -own_select.sum(1).view(-1, 1, 1, 1),
            "class_index": torch.arange(self.num_labels),
            "variant_mask": variant_mask[:, None, :, None], "pair_weights": pair_weights[:, :, None],
            "difference_matrix": difference, "negative_matrix": negative,
            "margin_tensor": torch.full((1, 1, 1), float(self.margin)), "own_select": own_select,
            "own_offset": (own_select.sum(1, keepdim=True) == 0).float(), "routing": routing, "loss_offset": offset,
        }

    def forward(self, tokens: torch.Tensor, present: torch.Tensor, null_tokens: torch.Tensor,
                labels: torch.Tensor | None = None, noise=None) -> InteractionOutput:
        weights = self.reweighting(self.modality_mean(tokens).flatten(1))  # (B, K)
        if self.training and self.training_steps < self.warmup_steps:
            # Warm-up: equal weights, so every expert gets the task gradient before any routing.
            weights = torch.full_like(weights, 1.0 / self.num_experts) + 0.0 * weights
        interaction_loss = loss_terms = None
        if self.training:
            self.training_steps += 1
            clean, outputs, rows = self._perturbed_passes(tokens, present, null_tokens, noise)
            loss_present = present if rows is None else present[rows]
            pairs = self._pair_weights(loss_present)  # shared by the paper's and the label-guided terms
            # In float32 even under autocast: squared distances of large fp16 logits overflow to inf (NaN loss).
            with torch.autocast(tokens.device.type, enabled=False):
                losses = self.interaction_loss_terms(outputs, loss_present, pairs)
            unweighted = losses.mean()
            interaction_loss = self.lambda_int * unweighted
            loss_terms = {**dict(zip(self.component_names, losses.unbind(0))), "interaction": unweighted}
            guidance_weight = self.guidance_weight_for(labels)
            if guidance_weight:
                loss_labels = labels if rows is None else labels[rows]
                with torch.autocast(tokens.device.type, enabled=False):
                    guided = self.label_guidance_terms(outputs, loss_present, loss_labels, pairs)
                loss_terms["label_guidance"] = guided.mean()
                interaction_loss = interaction_loss + guidance_weight * loss_terms["label_guidance"]
            if self.balance_weight:
                loss_terms["balance"] = weight_balance_loss(weights)
                interaction_loss = interaction_loss + self.balance_weight * loss_terms["balance"]
            if self.expert_loss_weight and labels is not None:
                loss_terms["expert_task"] = self.expert_task_loss(clean, labels)
                interaction_loss = interaction_loss + self.expert_loss_weight * loss_terms["expert_task"]
        else:
            clean = self.run_experts(tokens)  # (K, B, C): the clean pass only
        component_logits = clean.transpose(0, 1)  # (B, K, C)
        logits = torch.bmm(weights.to(component_logits.dtype)[:, None, :], component_logits).squeeze(1)
        return InteractionOutput(
            logits=logits, component_logits=component_logits, component_weights=weights,
            interaction_loss=interaction_loss, loss_terms=loss_terms,
        )

    def guidance_weight_for(self, labels: torch.Tensor | None) -> float:
        """The weight of the label-guided losses for these labels: `i2moe.label_guidance_weight`. Unset,
        it is resolved at the first labelled training call and stored in the config, as an unset
        `problem_type` is, so that a saved model keeps the objective it was trained with:
        `DEFAULT_LABEL_GUIDANCE_WEIGHT` for single-label class indices (the labels' form decides, as
        it decides `problem_type`), 0 for regression and multi-label targets."""
        if labels is None:
            return 0.0
        if self.settings.label_guidance_weight is None:
            class_indices = not self.regression and not labels.is_floating_point() and labels.dim() == 1
            self.settings.label_guidance_weight = DEFAULT_LABEL_GUIDANCE_WEIGHT if class_indices else 0.0
        return self.settings.label_guidance_weight

    def expert_task_loss(self, expert_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each expert's own task loss on the clean input, averaged over the K experts: `expert_logits`
        `(K, B, C)`. Without it an expert is trained for the task only through its weight, and the
        mixture collapses onto the expert that learns first (docs/i2moe.md, "Collapse")."""
        logits = expert_logits.float().flatten(0, 1)  # (K·B, C)
        if self.regression:
            targets = labels.float().reshape(1, -1, logits.shape[-1]).expand(self.num_experts, -1, -1)
            return F.mse_loss(logits, targets.flatten(0, 1))
        if labels.is_floating_point() and labels.dim() == 2:  # multi-label: one 0/1 target per class
            return F.binary_cross_entropy_with_logits(logits, labels.float().repeat(self.num_experts, 1))
        return F.cross_entropy(logits, labels.repeat(self.num_experts))

    def _perturbed_passes(self, tokens: torch.Tensor, present: torch.Tensor, null_tokens: torch.Tensor, noise=None):
        """Every expert on the clean rows and on the V = M + 1 variants of the rows the interaction
        loss reads: `(clean (K, B, C), outputs (K, V, R, C), rows)`, `rows` the indices of those R rows
        in the batch, or None when they are all of it. R = B, or with
        `perturbation_fraction` f < 1 a uniformly drawn subset of ceil(f B) rows: the loss's mean over
        those rows estimates its mean over the batch without bias (all modalities present; with
        missing ones each term is a ratio of such estimates), at K (B + M R) backbone rows instead
        of K (M + 1) B."""
        batch = tokens.shape[0]
        rows = self._loss_rows(batch, tokens.device)
        if rows is None:
            variants = torch.where(self.variant_mask, self.replacement(tokens, null_tokens, noise), tokens)  # (V, B, T, d)
            outputs = self.run_experts(variants.flatten(0, 1)).unflatten(1, (self.num_modalities + 1, batch))
            return outputs[:, 0], outputs, None
        chosen = tokens[rows]
        # The clean pass on every row (the task loss needs it), the perturbed ones on the chosen rows only.
        chosen_noise = None if noise is None else noise.subset(rows)
        perturbed = torch.where(self.variant_mask[1:], self.replacement(chosen, null_tokens, chosen_noise), chosen)  # (M, R, T, d)
        outputs = self.run_experts(torch.cat([tokens, perturbed.flatten(0, 1)]))  # (K, B + M R, C)
        clean = outputs[:, :batch]
        perturbed_outputs = outputs[:, batch:].unflatten(1, (self.num_modalities, rows.numel()))
        return clean, torch.cat([clean[:, None, rows], perturbed_outputs], dim=1), rows

    def _loss_rows(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """Which rows get perturbed passes: None (all) unless `perturbation_fraction` < 1."""
        if self.perturbation_fraction >= 1.0:
            return None
        count = max(1, math.ceil(self.perturbation_fraction * batch))
        return torch.randperm(batch, device=device)[:count]

    def run_experts(self, rows: torch.Tensor) -> torch.Tensor:
        """All K experts on `(N, T, d)` token rows -> `(K, N, C)`, executed as `execution_plan` says:
        one stacked call, or chunks of rows (same numbers; see `I2MoEExpertsConfig.execution`)."""
        chunk_rows = self.execution_plan(rows)
        chunks = [rows] if chunk_rows >= rows.shape[0] else rows.split(chunk_rows)
        outputs = [self._experts_call(chunk[None]) for chunk in chunks]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    def execution_plan(self, rows: torch.Tensor) -> int:
        """Rows per expert call. Stacked (all rows at once) where kernel launches dominate (GPUs);
        on CPU chunks whose activations, `K x rows x activation_elements_per_row`, fit in
        `CPU_CACHE_BUDGET_BYTES`, so each elementwise op (GELU, dropout, norms) reads the matmul
        output from cache instead of DRAM (docs/i2moe.md, "Execution")."""
        execution = self.execution
        if execution == "auto":
            execution = "chunked" if rows.device.type == "cpu" else "stacked"
        if execution == "stacked":
            return rows.shape[0]
        if self.chunk_rows is not None:
            return self.chunk_rows
        row_bytes = self.num_experts * self.activation_elements_per_row * rows.element_size()
        return max(1, CPU_CACHE_BUDGET_BYTES // row_bytes)

    def _experts_call(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_experts and self.training and torch.is_grad_enabled():
            # Recomputed in the backward pass with the same dropout masks (the RNG state is restored).
            return checkpoint(self.experts, chunk, use_reentrant=False)
        return self.experts(chunk)

    def replacement(self, tokens: torch.Tensor, null_tokens: torch.Tensor, noise=None) -> torch.Tensor:
        """What a perturbed modality's tokens become, `(B or 1, T, d)`; each variant uses only its
        modality's slice. Noise is drawn per sample from `noise` (a `CounterNoise`) or else from
        torch's global RNG (`torch.manual_seed` repeats it); one draw serves every variant, since
        the variants use disjoint slices of it."""
        if self.perturbation == "noise":
            return standard_normal(noise, tokens, stream=2)
        if self.perturbation == "zero":
            return tokens.new_zeros(1, *tokens.shape[1:])
        if self.perturbation == "mean":
            return tokens.mean(0, keepdim=True)
        return null_tokens[None].to(tokens.dtype)

    def interaction_loss_terms(self, outputs: torch.Tensor, present: torch.Tensor,
                               pairs: torch.Tensor | None = None) -> torch.Tensor:
        """The K interaction losses `(K,)` from every expert's output on every variant
        `(K, V, B, C)` (variant 0 clean, variant j + 1 with modality j perturbed):

        - uniqueness expert i: `mean_{j != i, b} relu(||a - p_j|| - ||a - n|| + margin)` with anchor
          `a = y_i^0`, negative `n = y_i^i`, positives `p_j = y_i^j` (each divided by its norm first
          with `uniqueness_distance="normalized"`);
        - redundancy: `mean_{j, b} 1 - sim(y^0, y^j)` (perturbing one modality should not matter);
        - synergy: `mean_{j, b} sim(y^0, y^j)` (minimised: perturbing any modality should matter);

        where `sim` is the cosine similarity of the logits, or for regression `exp(-||y^0 - y^j||²)`
        (the cosine of scalar outputs is only their sign; this similarity is bounded like the
        cosine, so minimising it pushes the synergy expert's outputs apart: the correct sign).
        Means run over the pairs `_pair_weights` keeps (`pairs`: those weights, when the caller has them).

        Written for few kernels: every quantity is computed for all K experts at once, and
        constant routing weights pick the one each expert's loss uses (slicing per expert type
        would add kernels in the backward pass). The cosine comes from the distance of unit
        vectors, `cos(a, p) = 1 - ||a/|a| - p/|p|||² / 2`, so one difference matmul and one
        squared norm serve both the triplet distances and the cosines.
        """
        num_experts, num_variants, batch, num_labels = outputs.shape
        outputs = outputs.to(torch.promote_types(outputs.dtype, torch.float32))  # fp16/bf16 -> fp32, fp64 kept
        if self.regression:
            halves = outputs
        else:
            norms = torch.linalg.vector_norm(outputs, dim=-1, keepdim=True)
            halves = torch.cat([outputs, outputs / norms.clamp_min(1e-8)], dim=2)  # (K, V, H·B, C)
        # Every perturbed variant minus the clean one, all experts, one matmul: (K, M, H·B·C).
        differences = torch.matmul(self.difference_matrix, halves.view(num_experts, num_variants, -1))
        squared = differences.view(num_experts, self.num_modalities, -1, num_labels).square().sum(-1)  # (K, M, H·B)
        distances = (squared + 1e-12).sqrt()  # the epsilon keeps gradients finite where a pair coincides
        triplet = F.relu(torch.baddbmm(self.margin_tensor, self.negative_matrix, distances))
        similarity = torch.exp(-squared) if self.regression else squared
        candidates = torch.cat([triplet, similarity], dim=2).view(num_experts, self.num_modalities, -1, batch)
        pairs = self._pair_weights(present) if pairs is None else pairs
        weights = self.routing * pairs[:, :, None, :]  # (K, M, 2H, B)
        return (candidates * weights).sum((1, 2, 3)) + self.loss_offset

    def label_guidance_terms(self, outputs: torch.Tensor, present: torch.Tensor, labels: torch.Tensor,
                             pairs: torch.Tensor | None = None) -> torch.Tensor:
        """The K label-guided interaction losses `(K,)` (`label_guidance_weight`) from the same
        `(K, V, B, C)` outputs as `interaction_loss_terms`, over the same (perturbed modality j, row b)
        pairs (`pairs`: their weights, when the caller has them). Each is a cross-entropy
        `H(t, p) = -sum_c t_c log p_c` of an expert's prediction p against a target t:

        - uniqueness expert i, j != i: `H(y, p_i^j) + H(p_i^j, p_i^0)` (it still predicts the label when
          another modality is gone, and its clean prediction is pulled to that one, the target detached,
          so that on the clean input too it says what its own modality says);
        - redundancy: `H(y, p^j)` (it predicts from what is left when any one modality is gone);
        - synergy: `H(y, p^0) + H(u, p^j)`, u uniform (it predicts with every modality and says nothing
          without one).

        The paper's losses only ask how the outputs move under perturbation, which outputs unrelated to
        the label can satisfy (the dead synergy expert of docs/i2moe.md, "Collapse"); these ask what the
        moved outputs predict. Written as one weighted sum of the log-probabilities against constant
        targets: the targets carry the pair weights and the sign and need no gradient, so the backward
        pass is that of one product and one log-softmax.
        """
        if labels.is_floating_point() or labels.dim() != 1:
            raise ValueError(
                "I2MoE: `i2moe.label_guidance_weight` needs single-label class indices as `labels` (an integer "
                f"tensor of shape (batch,)), got a {labels.dtype} tensor of shape {tuple(labels.shape)}"
            )
        pairs = (self._pair_weights(present) if pairs is None else pairs)[..., None]  # (K, M, B, 1)
        log_probs = outputs.to(torch.promote_types(outputs.dtype, torch.float32)).log_softmax(-1)  # (K, V, B, C)
        # Negated targets, so that the sum below is the cross-entropy without a negation kernel.
        negated_label = torch.where(labels[:, None] == self.class_index, -1.0, 0.0).to(log_probs.dtype)  # (B, C)
        is_synergy = self.is_synergy[..., None]  # (K, 1, 1, 1)
        perturbed_targets = pairs * torch.where(is_synergy, -1.0 / log_probs.shape[-1], negated_label)
        # The clean output's targets: the label for synergy, each perturbed prediction for uniqueness
        # (`negated_uniqueness`: -1 for uniqueness experts, 0 for the others).
        own_predictions = log_probs[:, 1:].detach().exp() * self.negated_uniqueness
        clean_targets = (pairs * torch.where(is_synergy, negated_label, own_predictions)).sum(1, keepdim=True)
        targets = torch.cat([clean_targets, perturbed_targets], dim=1)  # (K, V, B, C)
        return (targets * log_probs).sum((1, 2, 3))

    def _pair_weights(self, present: torch.Tensor) -> torch.Tensor:
        """`(K, M, B)` weights of each expert's mean over (perturbed modality j, row b): a pair
        counts where modality j is present in the row and, for uniqueness expert i, modality i
        too (its negative); uniqueness expert i skips j = i. Rows of weights sum to 1."""
        present_t = present.T.to(self.own_select.dtype)  # (M, B)
        own = torch.addmm(self.own_offset, self.own_select, present_t)  # (K, B): modality i, or 1
        pairs = self.pair_weights * own[:, None] * present_t
        return pairs / _global_mean_count(pairs.sum((1, 2), keepdim=True), self.training).clamp_min(1.0)


def weight_balance_loss(weights: torch.Tensor) -> torch.Tensor:
    """`log K - H(mean_b w)`: zero when the batch uses every expert equally on average, `log K` when it
    uses one expert only. Per sample the weights may still route (as MoE load-balancing terms)."""
    usage = weights.float().mean(0)
    return math.log(weights.shape[-1]) + (usage * usage.clamp_min(1e-12).log()).sum()


def _global_mean_count(count: torch.Tensor, training: bool) -> torch.Tensor:
    """The pair count of each expert's mean, as the mean over the processes of a distributed
    training run: each process's loss is then `sum_local / (count_global / world_size)`, and DDP's
    average of the processes' gradients is the gradient of the one-process mean over the global
    batch, however the processes' batches differ in missing modalities."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not (training and distributed and torch.distributed.get_world_size() > 1):
        return count
    count = count.detach().clone()
    torch.distributed.all_reduce(count)
    return count / torch.distributed.get_world_size()


__all__ = ["I2MoEInteraction", "ReweightingModel", "weight_balance_loss"]
