"""Reference computations for the oracle tests, written from the formulas (METHODS.md, the
docstrings) with plain loops and torch primitives, never with the package's own code.

Weights are read from the modules under test by parameter name; every function here computes for
ONE stack (one expert, one backbone copy) and one batch `(N, T, d)`, so that "S stacked copies"
is checked as "S times the one-copy formula".
"""

from __future__ import annotations

import math

import torch


def randomize_parameters(module: torch.nn.Module, seed: int = 0, scale: float = 0.4) -> torch.nn.Module:
    """Every parameter drawn afresh (float64 modules): biases and LayerNorm gains non-trivial, so a
    bug that drops a bias or a gain cannot hide behind an initialisation of zeros or ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            values = torch.randn(parameter.shape, generator=generator, dtype=torch.float64) * scale
            if name.endswith("layer_norm.weight"):
                values = values + 1.0
            parameter.copy_(values.to(parameter.dtype))
    return module


def stacked_affine(inputs: torch.Tensor, weights: dict, prefix: str, stack: int) -> torch.Tensor:
    """`x W + b` for stack `stack` of a stacked linear layer stored as weight (S, in, out), bias (S, 1, out)."""
    return inputs @ weights[f"{prefix}.weight"][stack] + weights[f"{prefix}.bias"][stack, 0]


def linear(inputs: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """`x W^T + b` for an `nn.Linear`."""
    return inputs @ layer.weight.T + layer.bias


def relu(values: torch.Tensor) -> torch.Tensor:
    return torch.where(values > 0, values, torch.zeros_like(values))


def gelu(values: torch.Tensor) -> torch.Tensor:
    """The exact (erf) GELU."""
    return 0.5 * values * (1.0 + torch.erf(values / math.sqrt(2.0)))


def softmax(values: torch.Tensor) -> torch.Tensor:
    shifted = values - values.max(-1, keepdim=True).values
    return shifted.exp() / shifted.exp().sum(-1, keepdim=True)


def log_softmax(values: torch.Tensor) -> torch.Tensor:
    return values - torch.log(torch.exp(values).sum(-1, keepdim=True))


def layer_norm(values: torch.Tensor, gain=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    mean = values.mean(-1, keepdim=True)
    variance = ((values - mean) ** 2).mean(-1, keepdim=True)
    normed = (values - mean) / torch.sqrt(variance + eps)
    return normed if gain is None else normed * gain + bias


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over rows of `-log softmax(logits)[label]`."""
    log_probs = log_softmax(logits)
    return torch.stack([-log_probs[row, label] for row, label in enumerate(labels.tolist())]).mean()


def modality_means(tokens: torch.Tensor, num_tokens) -> list[torch.Tensor]:
    """Each modality's tokens averaged, one `(N, d)` per modality, summing token by token."""
    means, start = [], 0
    for count in num_tokens:
        means.append(sum(tokens[:, start + offset] for offset in range(count)) / count)
        start += count
    return means


def mlp_head(features: torch.Tensor, weights: dict, prefix: str, stack: int) -> torch.Tensor:
    """`Linear -> ReLU -> (dropout: eval) -> Linear`."""
    hidden = relu(stacked_affine(features, weights, f"{prefix}.fc1", stack))
    return stacked_affine(hidden, weights, f"{prefix}.fc2", stack)


# --- fusion backbones: tokens (N, T, d) of one stack -> logits (N, C) ---


def concat_fusion(tokens, weights, stack, num_tokens, config) -> torch.Tensor:
    return mlp_head(torch.cat(modality_means(tokens, num_tokens), dim=-1), weights, "head", stack)


def lrtf_fusion(tokens, weights, stack, num_tokens, config) -> torch.Tensor:
    """`sum_r w_r prod_m ([z_m, 1] W_m^r) + b`, then the MLP head; W_m^r is columns
    `r*o : (r+1)*o` of modality m's factor."""
    rank, output_size = config.lrtf_rank, config.lrtf_output_size
    factors = weights["factors"][stack]  # (M, d + 1, R * o)
    rank_weights = weights["rank_weights"][stack].flatten()  # (R,)
    fused = weights["fusion_bias"][stack, 0].expand(tokens.shape[0], -1).clone()
    means = modality_means(tokens, num_tokens)
    for r in range(rank):
        product = torch.ones(tokens.shape[0], output_size, dtype=tokens.dtype)
        for m, mean in enumerate(means):
            extended = torch.cat([mean, torch.ones(mean.shape[0], 1, dtype=mean.dtype)], dim=-1)
            product = product * (extended @ factors[m][:, r * output_size:(r + 1) * output_size])
        fused = fused + rank_weights[r] * product
    return mlp_head(fused, weights, "head", stack)


def attention(query, key, value, mask=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head)) v, per batch row and head; `mask` (N, L) True where a key counts."""
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return softmax(scores) @ value


def split_heads(values: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, L, d) -> (N, heads, L, d / heads)."""
    batch, length, width = values.shape
    return values.reshape(batch, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(values: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_width = values.shape
    return values.transpose(1, 2).reshape(batch, length, heads * head_width)


def transformer_fusion(tokens, weights, stack, num_tokens, config) -> torch.Tensor:
    """Pre-LN blocks `x += Attn(LN(x)); x += MLP(LN(x))` (LayerNorms without gain or bias), the
    mean over tokens, a LayerNorm and a linear classifier."""
    width, heads = tokens.shape[-1], config.fusion_num_heads
    hidden = tokens + weights["position_embeddings"][stack, 0]
    for layer in range(config.fusion_num_layers):
        prefix = f"layers.{layer}"
        qkv = stacked_affine(layer_norm(hidden), weights, f"{prefix}.qkv", stack)
        query, key, value = (split_heads(qkv[..., i * width:(i + 1) * width], heads) for i in range(3))
        hidden = hidden + stacked_affine(merge_heads(attention(query, key, value)), weights, f"{prefix}.out", stack)
        mlp = gelu(stacked_affine(layer_norm(hidden), weights, f"{prefix}.fc1", stack))
        hidden = hidden + stacked_affine(mlp, weights, f"{prefix}.fc2", stack)
    pooled = layer_norm(sum(hidden[:, t] for t in range(hidden.shape[1])) / hidden.shape[1])
    return stacked_affine(pooled, weights, "classifier", stack)


FUSION_ORACLES = {"concat": concat_fusion, "lrtf": lrtf_fusion, "transformer": transformer_fusion}


def fusion(name: str, tokens, weights, stack, num_tokens, config) -> torch.Tensor:
    return FUSION_ORACLES[name](tokens, weights, stack, num_tokens, config)


# --- I2MoE ---


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (torch.sqrt((a * a).sum()) * torch.sqrt((b * b).sum()))


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(((a - b) ** 2).sum())


def _mean_or_zero(values: list) -> torch.Tensor:
    return torch.stack(values).mean() if values else torch.tensor(0.0, dtype=torch.float64)


def i2moe_loss_terms(outputs: dict, present: torch.Tensor, names: list[str], margin: float, regression: bool,
                     normalized: bool = False) -> dict:
    """METHODS.md section 1, one expert, one pair at a time. `outputs[name]` is `(V, B, C)`: that
    expert on variant 0 (clean) and variant j + 1 (modality j perturbed). A pair (row b,
    perturbed modality j) counts only where modality j is present in row b; for uniqueness
    expert i, only where modality i is present too, and j = i is its negative, not a pair.
    `normalized`: the uniqueness triplet on each output divided by its Euclidean length."""
    num_modalities, batch = present.shape[1], present.shape[0]
    terms = {}
    for i in range(num_modalities):
        expert = outputs[names[i]]
        if normalized:
            expert = expert / torch.sqrt((expert ** 2).sum(-1, keepdim=True))
        values = [
            relu(euclidean(expert[0, b], expert[j + 1, b]) - euclidean(expert[0, b], expert[i + 1, b]) + margin)
            for j in range(num_modalities) if j != i
            for b in range(batch) if present[b, i] and present[b, j]
        ]
        terms[names[i]] = _mean_or_zero(values)

    def similarity(clean, perturbed):
        return torch.exp(-((clean - perturbed) ** 2).sum()) if regression else cosine(clean, perturbed)

    for name, term in (("synergy", lambda s: s), ("redundancy", lambda s: 1.0 - s)):
        expert = outputs[name]
        terms[name] = _mean_or_zero([
            term(similarity(expert[0, b], expert[j + 1, b]))
            for j in range(num_modalities) for b in range(batch) if present[b, j]
        ])
    return terms


def i2moe_label_guidance_terms(outputs: dict, present: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """The label-guided interaction losses (`i2moe.label_guidance_weight`), one expert, one pair at a
    time, over the pairs of `i2moe_loss_terms`, each a cross-entropy H(target, prediction): uniqueness
    expert i on (b, j != i) H(y, p_i^j) + H(p_i^j, p_i^0) (the clean prediction against the perturbed
    one); redundancy H(y, p^j); synergy H(y, p^0) + H(uniform, p^j)."""
    num_modalities, batch = present.shape[1], present.shape[0]

    def nll(logits, label):
        return -log_softmax(logits)[label]

    def cross_entropy(target_logits, logits):
        return -(softmax(target_logits) * log_softmax(logits)).sum()

    def cross_entropy_from_uniform(logits):
        return -log_softmax(logits).mean()

    terms = {}
    for i in range(num_modalities):
        expert = outputs[names[i]]
        terms[names[i]] = _mean_or_zero([
            nll(expert[j + 1, b], labels[b]) + cross_entropy(expert[j + 1, b], expert[0, b])
            for j in range(num_modalities) if j != i
            for b in range(batch) if present[b, i] and present[b, j]
        ])
    pairs = [(j, b) for j in range(num_modalities) for b in range(batch) if present[b, j]]
    redundancy, synergy = outputs["redundancy"], outputs["synergy"]
    terms["redundancy"] = _mean_or_zero([nll(redundancy[j + 1, b], labels[b]) for j, b in pairs])
    terms["synergy"] = _mean_or_zero([nll(synergy[0, b], labels[b]) + cross_entropy_from_uniform(synergy[j + 1, b])
                                      for j, b in pairs])
    return terms


def reweighting(features: torch.Tensor, module: torch.nn.Module, temperature: float) -> torch.Tensor:
    """softmax(MLP(z) / tau): the module's linear layers in order, ReLU between them (eval: no dropout)."""
    linears = [layer for layer in module.modules() if isinstance(layer, torch.nn.Linear)]
    hidden = features
    for layer in linears[:-1]:
        hidden = relu(linear(hidden, layer))
    return softmax(linear(hidden, linears[-1]) / temperature)


# --- I2M2 ---


def combine_i2m2(unimodal, present, inter, problem_type) -> torch.Tensor:
    """Row by row over the experts present in the row (the inter part always is, unless None)."""
    rows = []
    for b in range(unimodal.shape[0]):
        experts = [unimodal[b, m] for m in range(unimodal.shape[1]) if present[b, m]]
        experts += [] if inter is None else [inter[b]]
        if problem_type == "single_label_classification":
            rows.append(log_softmax(sum(log_softmax(expert) for expert in experts)))
        elif problem_type == "multi_label_classification":
            rows.append(sum(experts))
        else:
            rows.append(sum(experts) / len(experts))
    return torch.stack(rows)


# --- DMIL ---


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, e^logvar) || N(0, 1)), from torch.distributions."""
    p = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    return torch.distributions.kl_divergence(p, torch.distributions.Normal(torch.zeros_like(mean), 1.0)).mean()


def kl(mean_p, logvar_p, mean_q, logvar_q) -> torch.Tensor:
    p = torch.distributions.Normal(mean_p, torch.exp(0.5 * logvar_p))
    q = torch.distributions.Normal(mean_q, torch.exp(0.5 * logvar_q))
    return torch.distributions.kl_divergence(p, q).mean()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean()
