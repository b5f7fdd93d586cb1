"""Fisher information of ``nn.Linear`` layers: K-FAC / EKFAC factors and the diagonal Fisher.

For a linear layer ``s = W a + b`` and a per-sample loss ``l_i``, the per-sample gradient is
``g_i a_iᵀ`` with ``g_i = dl_i/ds_i`` ``(D_out,)`` and ``a_i`` ``(D_in [+1],)`` (a one is
appended for the bias). The Fisher of the layer is ``E[(a aᵀ) ⊗ (g gᵀ)]``; K-FAC approximates
it by ``A ⊗ G`` with ``A = E[a aᵀ]`` and ``G = E[g gᵀ]``; EKFAC keeps the eigenbases
``Q_a, Q_g`` of ``A, G`` but re-fits the diagonal scales in that basis,
``S = E[(Q_gᵀ g a ᵀ Q_a)²]``, which is exact on the diagonal of the rotated Fisher.

The labels behind ``g`` decide which Fisher this is: the true labels give the *empirical*
Fisher, labels sampled from the model's softmax give a Monte-Carlo estimate of the *true*
Fisher (see :func:`fisher_labels`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: the labels behind the K-FAC / EKFAC statistics NGF trains with: the clean labels (the empirical
#: Fisher) or labels sampled from the model's softmax (a Monte-Carlo estimate of the true Fisher)
FISHER_TYPES = ("empirical", "sampled")
#: the exact Fisher matrices the small-layer checks compute: the empirical one, or the true one
#: (the expectation over the model's softmax, computed in closed form rather than sampled)
EXACT_FISHER_TYPES = ("empirical", "true")


def with_bias_column(a: Tensor) -> Tensor:
    """``(N, D)`` -> ``(N, D + 1)``: append the constant input that multiplies the bias."""
    return torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)


def fisher_labels(logits: Tensor, labels: Tensor, fisher_type: str, generator: torch.Generator | None = None) -> Tensor:
    """Labels whose loss gradients define the Fisher: true ones or samples from ``softmax(logits)``."""
    if fisher_type == "empirical":
        return labels
    if fisher_type == "sampled":
        probs = logits.detach().softmax(1).cpu()
        return torch.multinomial(probs, 1, generator=generator).flatten().to(labels.device)
    raise ValueError(f"fisher_type must be one of {FISHER_TYPES}, got {fisher_type!r}")


def softmax_output_gradients(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample ``dl_i/ds_i = softmax(s_i) - onehot(y_i)`` of cross-entropy, shape ``(N, C)``."""
    return logits.detach().softmax(1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)


def symmetric_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """``eigh`` of (a batch of) symmetric PSD matrices, in float64 and with a tiny diagonal jitter
    on failure: Fisher factors of a well-fit model are often singular, where float32 ``eigh``
    can fail to converge."""
    m = matrix.double()
    m = (m + m.transpose(-1, -2)) / 2
    try:
        values, vectors = torch.linalg.eigh(m)
    except torch.linalg.LinAlgError:
        scale = m.diagonal(dim1=-2, dim2=-1).abs().mean().clamp_min(1e-30)
        values, vectors = torch.linalg.eigh(m + 1e-9 * scale * torch.eye(m.shape[-1], dtype=m.dtype, device=m.device))
    return values.to(matrix.dtype), vectors.to(matrix.dtype)


def kfac_factors(a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """``A = aᵀa / N`` ``(..., D_in, D_in)`` and ``G = gᵀg / N`` ``(..., D_out, D_out)`` from per-sample
    rows ``a`` ``(..., N, D_in)`` and ``g`` ``(..., N, D_out)``; leading dimensions are a batch of layers."""
    n = a.shape[-2]
    return a.transpose(-1, -2) @ a / n, g.transpose(-1, -2) @ g / n


def eigenbasis_scales(a: Tensor, g: Tensor, q_a: Tensor, q_g: Tensor) -> Tensor:
    """EKFAC scales ``S = E[(Q_gᵀ g_i)² ((Q_aᵀ a_i)²)ᵀ]`` of shape ``(..., D_out, D_in)``.

    Each per-sample gradient ``g_i a_iᵀ`` is rank one, so its square in the eigenbasis is the
    outer product of the squared projections; no ``(N, D_out, D_in)`` tensor is formed.
    """
    return (g @ q_g).pow(2).transpose(-1, -2) @ (a @ q_a).pow(2) / a.shape[-2]


def diagonal_fisher(a: Tensor, g: Tensor) -> Tensor:
    """Diagonal of the Fisher from per-sample gradients, ``E[g_i² (a_i²)ᵀ]``, shape ``(D_out, D_in)``.

    This is the mean of squared per-sample gradients, not the square of the mean gradient.
    """
    return g.pow(2).T @ a.pow(2) / a.shape[0]


class KFACState:
    """Running K-FAC / EKFAC estimate of the Fisher of one linear layer, or of a batch of ``M``
    independent copies of it (weight and bias as one matrix).

    Shapes: per-sample inputs ``a`` ``(N, D_in)`` and output gradients ``g`` ``(N, D_out)`` for one
    layer, ``(M, N, D_in)`` / ``(M, N, D_out)`` for a batch; gradients ``(D_out, D_in)`` or
    ``(M, D_out, D_in)``. ``update`` folds a batch into running averages (``decay`` weights the old
    value); ``refresh_eigenbasis`` recomputes ``Q_a, Q_g`` and resets ``S`` to ``Λ_g Λ_aᵀ``;
    ``solve`` applies ``(Fisher + damping)⁻¹`` to a gradient. The hook-based optimiser
    (:class:`~ngfkit.defences.natural_gradient.NaturalGradient`) keeps one state per layer, the
    batched heads of the fast path (:func:`~ngfkit.defences.batched_heads.fit_heads`) one state for all.
    """

    def __init__(self, damping: float = 1e-3, decay: float = 0.95, ekfac: bool = True):
        self.damping = damping
        self.decay = decay
        self.ekfac = ekfac
        self.A: Tensor | None = None
        self.G: Tensor | None = None
        self.q_a: Tensor | None = None
        self.q_g: Tensor | None = None
        self.scales: Tensor | None = None

    def _average(self, old: Tensor | None, new: Tensor) -> Tensor:
        return new if old is None else self.decay * old + (1 - self.decay) * new

    def update(self, a: Tensor, g: Tensor) -> None:
        """Fold per-sample inputs ``a`` ``(..., N, D_in)`` and output gradients ``g`` ``(..., N, D_out)`` in."""
        a_factor, g_factor = kfac_factors(a, g)
        self.A = self._average(self.A, a_factor)
        self.G = self._average(self.G, g_factor)
        if self.ekfac and self.q_a is not None:
            self.scales = self._average(self.scales, eigenbasis_scales(a, g, self.q_a, self.q_g))

    def refresh_eigenbasis(self) -> None:
        eig_a, self.q_a = symmetric_eigh(self.A)
        eig_g, self.q_g = symmetric_eigh(self.G)
        self.scales = eig_g.clamp_min(0).unsqueeze(-1) * eig_a.clamp_min(0).unsqueeze(-2)

    @property
    def ready(self) -> bool:
        return self.q_a is not None

    def rotate(self, matrix: Tensor) -> Tensor:
        """``Q_gᵀ matrix Q_a``: a ``(..., D_out, D_in)`` matrix in the Fisher's eigenbasis."""
        return self.q_g.transpose(-1, -2) @ matrix @ self.q_a

    def unrotate(self, matrix: Tensor) -> Tensor:
        """``Q_g matrix Q_aᵀ``, the inverse of :meth:`rotate`."""
        return self.q_g @ matrix @ self.q_a.transpose(-1, -2)

    def solve(self, grad: Tensor) -> Tensor:
        """``Q_g [(Q_gᵀ grad Q_a) / (S + damping)] Q_aᵀ`` for ``grad`` of shape ``(..., D_out, D_in)``."""
        return self.unrotate(self.rotate(grad) / (self.scales + self.damping))
