"""The exact Fisher of one linear layer next to its K-FAC and EKFAC approximations: the worked
example of the natural-gradient chapter.

Layout. The layer ``s = W a + b`` is the matrix ``Θ = [W, b]`` of shape ``(C, D+1)``; its
parameters are flattened row by row, ``θ[c (D+1) + j] = Θ[c, j]`` (``P = C (D+1)`` of them), so
the per-sample gradient ``g_i a_iᵀ`` flattens to ``g_i ⊗ a_i`` (``a_i`` carries a trailing 1
for the bias).

Fisher. With ``M_i`` the ``(C, C)`` Fisher of the loss in the layer's outputs for sample ``i``,

- empirical Fisher (gradients at the true labels, NGF's default): ``M_i = g_i g_iᵀ`` with
  ``g_i = softmax(s_i) − onehot(y_i)``;
- true Fisher (expectation over labels drawn from the model, which the ``sampled`` option of
  NGF estimates by Monte Carlo): ``M_i = diag(p_i) − p_i p_iᵀ``, ``p_i = softmax(s_i)``;

the exact Fisher of the mean loss over ``N`` samples is ``F = (1/N) Σ_i M_i ⊗ a_i a_iᵀ``
``(P, P)``. K-FAC replaces the mean of Kronecker products by the Kronecker product of means,
``F ≈ G ⊗ A`` with ``G = (1/N) Σ_i M_i`` ``(C, C)`` and ``A = (1/N) Σ_i a_i a_iᵀ``
``(D+1, D+1)`` (``A ⊗ G`` in the column-stacking convention of the K-FAC papers). In the
Kronecker eigenbasis ``Q = Q_g ⊗ Q_a`` K-FAC is diagonal with entries ``λ_g λ_a``; EKFAC keeps
``Q`` but uses the exact diagonal of ``Qᵀ F Q``, so its Frobenius error is exactly the
off-diagonal mass of the rotated Fisher. K-FAC is exact whenever ``a_i a_iᵀ`` or ``M_i`` is the
same for every sample (for instance a single sample).

Everything here runs in float64 on the CPU: the point is an exact reference, not speed.
:mod:`ngfkit.viz.fisher_check` draws the results.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import NgfkitError
from ..curvature.fisher import EXACT_FISHER_TYPES, KFACState, with_bias_column
from ..metrics import predict
from ..models import classifier_layer
from ..defences.classifier_only import layer_matrix

FISHER_KINDS = EXACT_FISHER_TYPES  # the name this module has always exported


def output_fisher(logits: Tensor, labels: Tensor, kind: str = "empirical") -> Tensor:
    """Per-sample Fisher of cross-entropy in the layer's outputs, ``M`` of shape ``(N, C, C)``."""
    probs = logits.softmax(-1)
    if kind == "empirical":
        g = probs - F.one_hot(labels, logits.shape[-1]).to(probs.dtype)
        return g.unsqueeze(2) * g.unsqueeze(1)
    if kind == "true":
        return torch.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1)
    raise NgfkitError(f"Fisher kind must be one of {', '.join(FISHER_KINDS)}, got {kind!r}")


def exact_fisher(a: Tensor, m: Tensor, chunk: int = 128) -> Tensor:
    """``F = (1/N) Σ_i M_i ⊗ a_i a_iᵀ`` of shape ``(C (D+1), C (D+1))`` from inputs ``a``
    ``(N, D+1)`` and output Fishers ``m`` ``(N, C, C)`` (row-major ``[W, b]`` layout)."""
    n, d = a.shape
    c = m.shape[1]
    blocks = a.new_zeros(c * c * d, d)
    for start in range(0, n, chunk):
        a_part, m_part = a[start:start + chunk], m[start:start + chunk]
        weighted = m_part.reshape(-1, c * c, 1) * a_part.unsqueeze(1)  # (n, C*C, D+1)
        blocks += weighted.reshape(len(a_part), c * c * d).T @ a_part
    return (blocks / n).reshape(c, c, d, d).permute(0, 2, 1, 3).reshape(c * d, c * d)


def kfac_pair(a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """K-FAC factors ``A = aᵀa / N`` ``(D+1, D+1)`` and ``G = mean_i M_i`` ``(C, C)``."""
    return a.T @ a / a.shape[0], m.mean(0)


def ekfac_scales(a: Tensor, m: Tensor, q_a: Tensor, q_g: Tensor) -> Tensor:
    """The exact diagonal of ``Qᵀ F Q`` in the Kronecker eigenbasis, shape ``(C, D+1)``:
    ``S[k, u] = (1/N) Σ_i (q_gkᵀ M_i q_gk) (q_auᵀ a_i)²``."""
    m_diag = torch.einsum("nce,ck,ek->nk", m, q_g, q_g)  # (N, C)
    return m_diag.T @ (a @ q_a).pow(2) / a.shape[0]


def rotate(fisher: Tensor, q_g: Tensor, q_a: Tensor) -> Tensor:
    """``Qᵀ F Q`` with ``Q = Q_g ⊗ Q_a``, computed factor by factor, shape ``(P, P)``."""
    c, d = q_g.shape[0], q_a.shape[0]
    t = fisher.reshape(c, d, c, d)
    t = torch.einsum("ck,cuev->kuev", q_g, t)
    t = torch.einsum("ju,kjev->kuev", q_a, t)
    t = torch.einsum("el,kuev->kulv", q_g, t)
    t = torch.einsum("vw,kulv->kulw", q_a, t)
    return t.reshape(c * d, c * d)


def kronecker_state(A: Tensor, G: Tensor, damping: float, scales: Tensor | None = None) -> KFACState:
    """The :class:`~ngfkit.curvature.fisher.KFACState` NGF would hold for these factors (EKFAC when
    ``scales`` are given), ready to :meth:`~ngfkit.curvature.fisher.KFACState.solve`."""
    state = KFACState(damping=damping, ekfac=scales is not None)
    state.A, state.G = A, G
    state.refresh_eigenbasis()
    if scales is not None:
        state.scales = scales
    return state


def damped_solve(fisher: Tensor, grad: Tensor, damping: float) -> Tensor:
    """The exact natural-gradient direction ``(F + damping I)⁻¹ vec(grad)``, reshaped like ``grad``."""
    eye = torch.eye(fisher.shape[0], dtype=fisher.dtype, device=fisher.device)
    factor = torch.linalg.cholesky(fisher + damping * eye)
    return torch.cholesky_solve(grad.reshape(-1, 1), factor).reshape(grad.shape)


def relative_error(approx: Tensor, exact: Tensor) -> float:
    """``‖approx − exact‖ / ‖exact‖`` (Frobenius)."""
    return float((approx - exact).norm() / exact.norm().clamp_min(1e-300))


def cosine(u: Tensor, v: Tensor) -> float:
    return float((u * v).sum() / (u.norm() * v.norm()).clamp_min(1e-300))


def compare_fisher(a: Tensor, logits: Tensor, labels: Tensor, *, kind: str = "empirical",
                   dampings: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1)) -> dict:
    """Exact Fisher vs K-FAC and EKFAC for a last layer with inputs ``a`` ``(N, D+1)`` (bias
    column included), outputs ``logits`` ``(N, C)`` and ``labels`` ``(N,)``.

    Returns the exact ``fisher`` ``(P, P)``, the factors ``A``, ``G``, the EKFAC ``scales``,
    the mean-loss gradient ``grad`` ``(C, D+1)`` (at the true labels, as NGF's step uses),
    ``fro`` (relative Frobenius errors of K-FAC and EKFAC), ``kfac_trace_ratio``
    (``tr(G ⊗ A) / tr(F)``), ``size_correlation`` (Pearson correlation over samples of
    ``tr M_i = ‖g_i‖²`` (empirical) and ``‖a_i‖²``: K-FAC assumes them independent),
    ``A_small_fraction`` (share of ``A``'s eigenvalues below 1e-3 of its largest) and
    ``directions``: per damping, the
    relative error and cosine of the K-FAC and EKFAC natural-gradient directions against the
    exact ``(F + damping I)⁻¹ ∇``.
    """
    a, logits = a.double().cpu(), logits.double().cpu()
    labels = labels.cpu()
    m = output_fisher(logits, labels, kind)
    fisher = exact_fisher(a, m)
    A, G = kfac_pair(a, m)
    kfac = torch.kron(G, A)
    base = kronecker_state(A, G, 1.0)
    scales = ekfac_scales(a, m, base.q_a, base.q_g)
    # EKFAC is Qᵀ F Q with its off-diagonal dropped and Q orthogonal: ‖F − F_ekfac‖² = ‖F‖² − ‖S‖²
    norm = fisher.norm().clamp_min(1e-300)
    ekfac_error = float((norm.pow(2) - scales.pow(2).sum()).clamp_min(0).sqrt() / norm)
    grad = (logits.softmax(-1) - F.one_hot(labels, logits.shape[1]).double()).T @ a / a.shape[0]
    directions = []
    for damping in dampings:
        exact = damped_solve(fisher, grad, damping)
        row = {"damping": float(damping)}
        for name, state in (("kfac", kronecker_state(A, G, damping)),
                            ("ekfac", kronecker_state(A, G, damping, scales))):
            approx = state.solve(grad)
            row[f"{name}_error"] = relative_error(approx, exact)
            row[f"{name}_cosine"] = cosine(approx, exact)
        row["sgd_cosine"] = cosine(grad, exact)  # how far the natural gradient turns the plain one
        directions.append(row)
    eigenvalues = torch.linalg.eigvalsh(A)
    # K-FAC assumes output gradients and inputs independent; their sizes per sample say how far off that is
    size_g, size_a = m.diagonal(dim1=1, dim2=2).sum(1), a.pow(2).sum(1)
    correlation = float(torch.corrcoef(torch.stack([size_g, size_a]))[0, 1]) if a.shape[0] > 1 else float("nan")
    return {"kind": kind, "num_samples": a.shape[0], "num_classes": G.shape[0], "num_inputs": A.shape[0],
            "fisher": fisher, "kfac": kfac, "A": A, "G": G, "scales": scales, "grad": grad,
            "fro": {"kfac": relative_error(kfac, fisher), "ekfac": ekfac_error},
            "kfac_norm_ratio": float(kfac.norm() / norm),
            "kfac_trace_ratio": float(G.trace() * A.trace() / fisher.trace().clamp_min(1e-300)),
            "size_correlation": correlation,
            "directions": directions,
            "A_small_fraction": float((eigenvalues < 1e-3 * eigenvalues.max()).double().mean())}


@torch.no_grad()
def classifier_batch(model: nn.Module, dataset: Dataset, *, num_samples: int | None = None, seed: int = 0,
                     device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Inputs ``a`` ``(N, D+1)`` (bias column appended), logits ``(N, C)`` and labels ``(N,)`` of
    the model's classifier on ``num_samples`` random images of ``dataset`` (all if ``None``),
    model in eval mode, float64."""
    if num_samples is not None and num_samples < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        dataset = dataset.subset(order[:num_samples].sort().values)
    head = classifier_layer(model)
    kept = predict(model, dataset, device=device, keep_inputs_of=head)
    a = with_bias_column(kept["clean_inputs"].double())
    weight = layer_matrix(head).double().cpu()
    return a, a @ weight.T, kept["labels"]


def fisher_example(model: nn.Module, dataset: Dataset, *, num_samples: int | None = 600, kind: str = "empirical",
                   dampings: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1), seed: int = 0,
                   device: torch.device | str = "cpu") -> dict:
    """:func:`compare_fisher` for the final classifier of ``model`` on images of ``dataset``."""
    a, logits, labels = classifier_batch(model, dataset, num_samples=num_samples, seed=seed, device=device)
    return compare_fisher(a, logits, labels, kind=kind, dampings=dampings)


def curvlinops_reference(a: Tensor, labels: Tensor, weight: Tensor, kind: str = "empirical") -> dict:
    """The same layer's exact Fisher and K-FAC from curvlinops (``EFLinearOperator`` /
    ``GGNLinearOperator``, which equals the true Fisher for cross-entropy, and
    ``KFACLinearOperator``), as dense ``(P, P)`` matrices in this module's ``[W, b]`` layout.

    ``a`` ``(N, D+1)`` are the layer's inputs with the bias column, ``weight`` ``(C, D+1)`` its
    ``[W, b]``. An independent implementation to check :func:`compare_fisher` against.
    """
    import warnings

    with warnings.catch_warnings():  # curvlinops scripts helpers with torch.jit, deprecated
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        from curvlinops import EFLinearOperator, GGNLinearOperator, KFACLinearOperator

    if kind not in FISHER_KINDS:
        raise NgfkitError(f"Fisher kind must be one of {', '.join(FISHER_KINDS)}, got {kind!r}")
    a, weight = a.double().cpu(), weight.double().cpu()
    c, d = weight.shape
    layer = nn.Linear(d - 1, c).double()
    with torch.no_grad():
        layer.weight.copy_(weight[:, :-1])
        layer.bias.copy_(weight[:, -1])
    params = [layer.weight, layer.bias]
    data = [(a[:, :-1], labels.cpu())]
    loss = nn.CrossEntropyLoss()
    # curvlinops flattens W row-major, then b; this module interleaves: row c is [W_c, b_c]
    order = torch.tensor([i * (d - 1) + j if j < d - 1 else c * (d - 1) + i for i in range(c) for j in range(d)])
    eye = torch.eye(c * d, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact_op = (EFLinearOperator if kind == "empirical" else GGNLinearOperator)(
            layer, loss, params, data, check_deterministic=False)
        kfac_op = KFACLinearOperator(layer, loss, params, data, check_deterministic=False,
                                     fisher_type="empirical" if kind == "empirical" else "type-2",
                                     separate_weight_and_bias=False)
        exact, kfac = exact_op @ eye, kfac_op @ eye
    return {"fisher": exact[order][:, order], "kfac": kfac[order][:, order]}
