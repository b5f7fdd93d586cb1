"""Sharpness of a model's loss surface: λmax, top-k eigenvalues, trace and spectral density.

Everything here is built on curvlinops' curvature linear operators (Hessian or generalised
Gauss-Newton of the mean cross-entropy over a fixed clean sample) and on SciPy:

* :func:`top_eigenvalues` -- ``scipy.sparse.linalg.eigsh(which="LA")`` on ``operator.to_scipy()``;
* :func:`hessian_trace` -- Hutchinson, Hutch++ (Meyer et al. 2020) or curvlinops' XTrace;
* :func:`spectral_density` -- stochastic Lanczos quadrature with curvlinops' ``fast_lanczos``
  and Gaussian-kernel smoothing (Papyan 2020, the method PyHessian uses);
* :func:`measure` -- λmax, top-k and trace in one JSON-able dict (what ``ngfkit sharpness``
  reports).

Each works on the whole model or on a subset of its parameters (``params="last"``: the
classifier layer NGF fine-tunes, or a list of parameter / layer names). The model is copied and
put in eval mode (BatchNorm uses its running statistics, so the loss is a deterministic function
of the weights), the caller's model is never changed. Loss: cross-entropy, mean over all samples.

Cost: one Hessian-vector product (HVP) costs about three gradient evaluations over the sample.
Products with several vectors at once are batched with ``vmap`` (``vector_chunk`` columns per
call), the samples in ``batch_size`` chunks; there is no per-sample loop anywhere.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence, Union

import warnings

import numpy as np
import torch

# curvlinops scripts helpers with torch.jit (at import and at first use); the deprecation notice
# is not ours to act on and would only confuse a user of `ngfkit sharpness`
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
from curvlinops import GGNLinearOperator, HessianLinearOperator  # noqa: E402
from curvlinops._torch_base import CurvatureLinearOperator  # noqa: E402
from torch import Tensor, nn

from ..errors import NgfkitError
from ..train import to_channels_last, use_channels_last

#: which parameters: "all", "last" (the classifier layer) or parameter / layer names
ParamSpec = Union[str, Sequence[str]]

TRACE_METHODS = ("hutch++", "hutchinson", "xtrace")


# --------------------------------------------------------------------------------------------
# the curvature operator
# --------------------------------------------------------------------------------------------
class _ChunkedColumns:
    """Mixin for a curvlinops operator: multiply at most ``vector_chunk`` columns per ``vmap``
    call (the memory of a vmapped HVP grows with the number of columns), and count the
    matrix-vector products so that results can report their cost."""

    vector_chunk: int = 4
    matvecs: int = 0

    def _matmat(self, M: list[Tensor]) -> list[Tensor]:
        """``M``: one tensor per parameter, shaped ``(*param.shape, K)``; returns the same shapes."""
        columns = M[0].shape[-1]
        self.matvecs += columns
        if columns <= self.vector_chunk:
            return super()._matmat(M)
        parts = [super(_ChunkedColumns, self)._matmat([m[..., s : s + self.vector_chunk] for m in M])
                 for s in range(0, columns, self.vector_chunk)]
        return [torch.cat(chunks, dim=-1) for chunks in zip(*parts)]


class ChunkedHessian(_ChunkedColumns, HessianLinearOperator):
    """curvlinops' :class:`~curvlinops.HessianLinearOperator` with column chunking."""


class ChunkedGGN(_ChunkedColumns, GGNLinearOperator):
    """curvlinops' :class:`~curvlinops.GGNLinearOperator` with column chunking."""


CURVATURES = {"hessian": ChunkedHessian, "ggn": ChunkedGGN}


def select_parameters(model: nn.Module, params: ParamSpec = "all") -> list[str]:
    """Names of the trainable parameters ``params`` picks, in ``model.named_parameters()`` order.

    ``params``: ``"all"``; ``"last"`` (the classifier layer of an ngfkit ``Classifier``, the layer
    NGF touches); or a name / list of names, each a parameter (``"head.weight"``) or a module
    whose parameters are all taken (``"head"``, ``"body.0"``).
    """
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise NgfkitError("the model has no trainable parameters (all have requires_grad=False)")
    if isinstance(params, str) and params == "all":
        return named
    if isinstance(params, str) and params == "last":
        layer = getattr(model, "classifier_name", None)
        if layer is None:
            raise NgfkitError("params='last' needs an ngfkit Classifier (a model with classifier_name); "
                              "pass parameter names instead, e.g. params=['fc.weight', 'fc.bias']")
        params = [layer]
    if isinstance(params, str):
        params = [params]
    chosen: list[str] = []
    for name in params:
        hits = [n for n in named if n == name or n.startswith(f"{name}.")]
        if not hits:
            shown = ", ".join(named[:8]) + (f", ... ({len(named)} in all)" if len(named) > 8 else "")
            raise NgfkitError(f"unknown parameter or layer {name!r}; the model's trainable parameters are: {shown}")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in named if n in chosen]  # model order, so results do not depend on the list's order


def eval_copy(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A copy of ``model`` in eval mode, channels-last (as every other ngfkit pass, so the
    losses match bit for bit), on ``device``; the caller's model is never changed."""
    return use_channels_last(copy.deepcopy(model)).to(device).eval()


def sample_batches(data: Any, *, num_samples: int | None = None, batch_size: int = 200,
                   device: torch.device | str = "cpu") -> list[tuple[Tensor, Tensor]]:
    """The first ``num_samples`` samples of ``data`` (all when ``None``) as a list of batches.

    ``data``: a dataset with ``get_batch`` (e.g. :class:`ngfkit.data.ImageTensorDataset`), any
    map-style dataset of ``(x, y)``, or a pair of tensors ``(x (N, ...), y (N,))``.
    Returns ``[(x (B, ...) float, y (B,) int64), ...]`` on ``device``; held in memory because
    every matrix-vector product passes over the sample again.
    """
    if num_samples is not None and int(num_samples) < 1:
        raise NgfkitError(f"the number of samples must be at least 1, got {num_samples}")
    if batch_size < 1:
        raise NgfkitError(f"batch size must be at least 1, got {batch_size}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise NgfkitError(f"data has {x.shape[0]} inputs but {y.shape[0]} labels")
        n = x.shape[0] if num_samples is None else min(int(num_samples), x.shape[0])
        x, y = x[:n].float(), y[:n].long()
    else:
        try:
            total = len(data)
        except TypeError:
            raise NgfkitError(f"data must be a dataset or a pair (x, y) of tensors, "
                              f"got {type(data).__name__}") from None
        n = total if num_samples is None else min(int(num_samples), total)
        if n and hasattr(data, "get_batch"):
            x, y = data.get_batch(torch.arange(n))
        elif n:
            items = [data[i] for i in range(n)]
            x = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
            y = torch.as_tensor([int(item[1]) for item in items])
        else:
            x = y = torch.zeros(0)
    if n == 0:
        raise NgfkitError("the data holds no samples; pass a non-empty clean subset")
    if not torch.isfinite(x).all():
        raise NgfkitError("the data contains NaN or infinite inputs")
    x, y = to_channels_last(x.to(device)), y.to(device).long()
    return list(zip(x.split(batch_size), y.split(batch_size)))


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[tuple[Tensor, Tensor]],
              overrides: dict[str, Tensor] | None = None) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy (fraction) of ``model`` (with the parameters /
    buffers in ``overrides`` swapped in, via ``functional_call``) over ``batches``."""
    total, correct, count = 0.0, 0, 0
    for x, y in batches:
        logits = torch.func.functional_call(model, overrides, (x,)) if overrides else model(x)
        if logits.dim() != 2 or y.min() < 0 or y.max() >= logits.shape[1]:
            raise NgfkitError(f"labels must lie in 0..{logits.shape[-1] - 1} for a model with "
                              f"{logits.shape[-1]} outputs, got {int(y.min())}..{int(y.max())}")
        total += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
    return total / count, correct / count


def hessian_operator(model: nn.Module, data: Any, *, params: ParamSpec = "all", batch_size: int = 200,
                     num_samples: int | None = None, device: torch.device | str = "cpu",
                     curvature: str = "hessian", vector_chunk: int = 4) -> CurvatureLinearOperator:
    """The curvature of the mean cross-entropy over a clean sample, as a curvlinops operator.

    Args:
        model: the network; it is copied and put in eval mode (yours is left as it is).
        data: see :func:`sample_batches`; the first ``num_samples`` samples are used.
        params: which parameters (see :func:`select_parameters`); the operator is the
            corresponding (P, P) block of the curvature matrix.
        batch_size: samples per forward pass (the loss is still the mean over all samples).
        curvature: ``"hessian"`` or ``"ggn"`` (generalised Gauss-Newton, positive semi-definite).
        vector_chunk: at most this many vectors per vmapped product (memory grows with it).
    Returns:
        a :class:`curvlinops.HessianLinearOperator` (or GGN) of shape ``(P, P)``: ``op @ v`` for
        ``v`` of shape ``(P,)`` or ``(P, K)``, ``op.to_scipy()`` for SciPy. Extra attributes:
        ``param_names``, ``params_spec``, ``num_samples``, ``loss`` (mean cross-entropy, nats),
        ``accuracy`` and ``matvecs`` (a counter of vectors multiplied so far).
    """
    if curvature not in CURVATURES:
        raise NgfkitError(f"unknown curvature {curvature!r}; use {' or '.join(CURVATURES)}")
    if vector_chunk < 1:
        raise NgfkitError(f"vector_chunk must be at least 1, got {vector_chunk}")
    names = select_parameters(model, params)
    batches = sample_batches(data, num_samples=num_samples, batch_size=batch_size, device=device)
    net = eval_copy(model, device)
    loss, accuracy = mean_loss(net, batches)
    if not math.isfinite(loss):
        raise NgfkitError(f"the loss on the {sum(len(y) for _, y in batches)} samples is {loss}; "
                          "the model's weights (or the data) contain NaN/Inf")
    lookup = dict(net.named_parameters())
    n = sum(len(y) for _, y in batches)
    # check_deterministic=False: it would cost two extra gradient passes and a product; the
    # model is in eval mode and the batches are fixed tensors, so it holds by construction.
    # num_data is given so that curvlinops need not pass over the data to count it.
    op = CURVATURES[curvature](net, nn.CrossEntropyLoss(reduction="mean"), [lookup[k] for k in names],
                               batches, check_deterministic=False, num_data=n)
    op.vector_chunk = int(vector_chunk)
    op.param_names, op.params_spec, op.num_samples = names, params, n
    op.loss, op.accuracy, op.curvature = loss, accuracy, curvature
    return op


def _operator(target, data, kwargs: dict) -> CurvatureLinearOperator:
    """``target`` is a model (then built on ``data``) or an operator from :func:`hessian_operator`."""
    if isinstance(target, CurvatureLinearOperator):
        if data is not None:
            raise NgfkitError("pass either an operator or a model with data, not an operator and data")
        return target
    if data is None:
        raise NgfkitError("the sharpness measures need data: a clean subset to evaluate the loss on")
    return hessian_operator(target, data, **kwargs)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generator (curvlinops draws its random vectors from it) for the
    block, then restore its state, so a measurement neither depends on nor disturbs the caller's
    random stream."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _describe(op: CurvatureLinearOperator) -> dict[str, Any]:
    spec = op.params_spec if isinstance(op.params_spec, str) else list(op.params_spec)
    return {"params": spec, "num_params": int(op.shape[0]), "samples": int(op.num_samples),
            "curvature": op.curvature}


def _finite(values, what: str) -> None:
    if not np.all(np.isfinite(np.asarray(values, dtype=float))):
        raise NgfkitError(f"the {what} is not finite; the loss surface has NaN/Inf curvature on this data")


# --------------------------------------------------------------------------------------------
# top eigenvalues
# --------------------------------------------------------------------------------------------
def top_eigenvalues(target, data: Any = None, k: int = 1, *, tol: float = 1e-2, max_iter: int = 100,
                    ncv: int | None = None, seed: int = 0, **operator_kwargs) -> dict[str, Any]:
    """The ``k`` largest (algebraic) eigenvalues of the curvature, with SciPy's ``eigsh``.

    Args:
        target: a model (with ``data``) or an operator from :func:`hessian_operator`.
        k: how many eigenvalues, ``1 <= k < P``.
        tol: ARPACK's relative tolerance: it stops when every Ritz pair's residual
            ``||H v - θ v|| <= tol * |θ|``, and for a symmetric matrix that bounds the distance
            from ``θ`` to an eigenvalue; 1e-2 (a guaranteed 1 %) typically gives 1e-4.
        max_iter: cap on ARPACK's restarts (each costs ``ncv - k`` products).
        ncv: Lanczos basis size; default ``max(2k + 2, 8)``: fewer products than SciPy's 20 for
            the well separated top of a Hessian spectrum (17 instead of 31 on smallcnn).
        seed: seeds the start vector.
        **operator_kwargs: ``params``, ``num_samples``, ``batch_size``, ``device``, ``curvature``
            for :func:`hessian_operator`.
    Returns:
        ``{"values": [λ1 >= ... >= λk], "error_bound": [tol * |λi|], "converged", "matvecs",
        "seconds", "tol", "k", "params", "num_params", "samples", "curvature"}``.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    start = time.perf_counter()
    op = _operator(target, data, operator_kwargs)
    n = op.shape[0]
    if not 1 <= int(k) < n:
        raise NgfkitError(f"k must be between 1 and {n - 1} (the operator has {n} parameters), got {k}")
    if not tol > 0 or max_iter < 1:
        raise NgfkitError(f"tol must be positive and max_iter at least 1, got tol={tol}, max_iter={max_iter}")
    ncv = min(n, int(ncv) if ncv else max(2 * int(k) + 2, 8))
    if ncv <= k:
        raise NgfkitError(f"ncv must exceed k={k}, got {ncv}")
    # ARPACK in float64 (orthogonalisation in double), products in the model's float32
    scipy_op = op.to_scipy(dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    before = op.matvecs
    converged = True
    try:
        values = eigsh(scipy_op, k=int(k), which="LA", tol=tol, maxiter=int(max_iter), ncv=ncv, v0=v0,
                       return_eigenvectors=False)
    except ArpackNoConvergence as exc:
        values, converged = np.asarray(exc.eigenvalues), False
        if len(values) < k:
            raise NgfkitError(f"eigsh found {len(values)} of {k} eigenvalues within {max_iter} restarts; "
                              f"raise max_iter or tol") from None
    values = sorted((float(v) for v in values), reverse=True)
    _finite(values, "top eigenvalue")
    return {"values": values, "error_bound": [tol * abs(v) for v in values], "converged": converged,
            "matvecs": op.matvecs - before, "seconds": time.perf_counter() - start, "tol": tol, "k": int(k),
            **_describe(op)}


# --------------------------------------------------------------------------------------------
# trace
# --------------------------------------------------------------------------------------------
def _probes(dim: int, count: int, distribution: str, op) -> Tensor:
    """``(P, count)`` random vectors drawn the way curvlinops' estimators draw them."""
    from curvlinops.sampling import random_vector

    return torch.column_stack([random_vector(dim, distribution, op.device, op.dtype) for _ in range(count)])


def hessian_trace(target, data: Any = None, *, probes: int = 99, method: str = "hutch++",
                  distribution: str = "rademacher", seed: int = 0, **operator_kwargs) -> dict[str, Any]:
    """Stochastic estimate of the curvature's trace (sum of eigenvalues) from ``probes`` products.

    Methods (all unbiased):

    * ``"hutchinson"``: mean of ``gᵀ H g`` over ``probes`` random ``g``; ``std`` is its standard
      error (sample std / sqrt(probes)).
    * ``"hutch++"`` (Meyer et al. 2020, as ``curvlinops.hutchpp_trace``, whose random draws it
      repeats exactly): a third of the products sketch the top subspace ``Q``, a third take
      ``tr(Qᵀ H Q)`` exactly, a third run Hutchinson on the rest; ``std`` is the standard error
      of that Hutchinson part (the sketched part has no sampling error once ``Q`` is drawn).
      Uses ``3 * (probes // 3)`` products. Far lower variance when a few eigenvalues dominate,
      as they do in a Hessian.
    * ``"xtrace"``: ``curvlinops.xtrace`` (Epperly et al. 2024), no spread (``std`` is None).

    Args:
        target: a model (with ``data``) or an operator from :func:`hessian_operator`.
        probes: matrix-vector products to spend; fewer than the number of parameters.
        distribution: ``"rademacher"`` or ``"normal"`` probe entries.
        seed: seeds the probes.
    Returns:
        ``{"trace", "std", "probes", "method", "matvecs", "seconds", "params", "num_params",
        "samples", "curvature"}``.
    """
    from curvlinops import xtrace

    start = time.perf_counter()
    if method not in TRACE_METHODS:
        raise NgfkitError(f"unknown trace method {method!r}; use {', '.join(TRACE_METHODS)}")
    if distribution not in ("rademacher", "normal"):
        raise NgfkitError(f"unknown probe distribution {distribution!r}; use rademacher or normal")
    op = _operator(target, data, operator_kwargs)
    n = op.shape[0]
    least = {"hutchinson": 2, "hutch++": 6, "xtrace": 2}[method]
    if not least <= int(probes) < n:
        raise NgfkitError(f"{method} needs between {least} and {n - 1} probes for {n} parameters, got {probes}")
    before = op.matvecs
    with _seeded(seed, op.device):
        if method == "hutchinson":
            g = _probes(n, int(probes), distribution, op)
            samples = (g * (op @ g)).sum(0)
            trace, std, used = float(samples.mean()), float(samples.std() / math.sqrt(len(samples))), len(samples)
        elif method == "hutch++":
            m = int(probes) // 3
            sketch = op @ _probes(n, m, distribution, op)
            q, _ = torch.linalg.qr(sketch)
            exact = float(torch.einsum("ij,ij", q, op @ q))
            g = _probes(n, m, distribution, op)  # drawn after the sketch, as curvlinops does
            projected = op @ (g - q @ (q.T @ g))
            projected -= q @ (q.T @ projected)
            samples = (g * projected).sum(0)
            trace, std, used = exact + float(samples.mean()), float(samples.std() / math.sqrt(m)), 3 * m
        else:
            used = int(probes) - int(probes) % 2
            trace, std = float(xtrace(op, used, distribution=distribution)), None
    _finite([trace] + ([std] if std is not None else []), "trace estimate")
    return {"trace": trace, "std": std, "probes": used, "method": method, "matvecs": op.matvecs - before,
            "seconds": time.perf_counter() - start, **_describe(op)}


# --------------------------------------------------------------------------------------------
# spectral density
# --------------------------------------------------------------------------------------------
def spectral_density(target, data: Any = None, *, lanczos_steps: int = 50, runs: int = 3, seed: int = 0,
                     num_points: int = 1024, kappa: float = 3.0, boundaries: tuple[float, float] | None = None,
                     margin: float | None = None, **operator_kwargs) -> dict[str, Any]:
    """Eigenvalue density ``p(λ) = (1/P) Σ_i δ(λ - λ_i)`` by stochastic Lanczos quadrature.

    Each run is ``lanczos_steps`` steps of curvlinops' ``fast_lanczos`` (Papyan 2020, alg. 2)
    from a random start; the tridiagonal matrix's eigenvalues (nodes) and first eigenvector
    components squared (weights, summing to 1) form a quadrature of the spectral measure, and
    each node is widened into a Gaussian (curvlinops' ``lanczos_approximate_spectrum_from_iter``);
    the runs are averaged. Cost: ``lanczos_steps * runs`` products.

    Args:
        lanczos_steps: nodes per run (>= 4); resolution grows with it.
        runs: independent Lanczos runs averaged (variance of the estimate falls with it).
        num_points: grid size.
        kappa: kernel width parameter (> 1): the Gaussian's std on the spectrum rescaled to
            [-1, 1] is ``2 / (lanczos_steps - 1) / sqrt(8 ln kappa)``; larger is narrower.
        boundaries: ``(λmin, λmax)`` to lay the grid on; default: the extreme nodes of all runs
            (which converge to the extreme eigenvalues first, so no extra ``eigsh`` is needed).
        margin: grid padding as a share of the spectral width; default: enough for 4 kernel
            widths beyond the extreme nodes, so the density integrates to 1.
    Returns:
        ``{"grid": [λ] (num_points,), "density": [p(λ)] (num_points,), "mass": ∫ p dλ,
        "nodes": [[...] per run] (runs, lanczos_steps), "weights": same shape, "trace": P * mean
        Σ w λ (the SLQ trace estimate), "trace_std" (its standard error over runs, None for one
        run), "lanczos_steps", "runs", "kappa", "matvecs", "seconds", "params", "num_params",
        "samples", "curvature"}``.
    """
    from curvlinops.papyan2020traces.spectrum import fast_lanczos, lanczos_approximate_spectrum_from_iter

    start = time.perf_counter()
    if int(lanczos_steps) < 4 or int(runs) < 1 or int(num_points) < 16:
        raise NgfkitError(f"spectral density needs lanczos_steps >= 4, runs >= 1 and num_points >= 16, "
                          f"got {lanczos_steps}, {runs}, {num_points}")
    if not kappa > 1:
        raise NgfkitError(f"kappa must be greater than 1, got {kappa}")
    op = _operator(target, data, operator_kwargs)
    n = op.shape[0]
    steps = int(lanczos_steps)
    if steps >= n:
        raise NgfkitError(f"lanczos_steps must be below the {n} parameters (Lanczos without "
                          f"re-orthogonalisation breaks down at the full dimension), got {steps}")
    before = op.matvecs
    iters = []
    with _seeded(seed, op.device):
        for _ in range(int(runs)):
            evals, evecs = fast_lanczos(op, steps)
            iters.append((evals.double().cpu(), evecs.double().cpu()))
    nodes = torch.stack([e for e, _ in iters])  # (runs, steps)
    weights = torch.stack([v[0, :] ** 2 for _, v in iters])  # (runs, steps), each row sums to 1
    _finite(nodes.numpy(), "Lanczos quadrature (it broke down; use fewer lanczos_steps)")
    lo, hi = boundaries if boundaries is not None else (float(nodes.min()), float(nodes.max()))
    if not hi > lo:  # a one-point spectrum: give the grid a width to draw the peak on
        lo, hi = lo - 1e-3 * max(abs(lo), 1.0), hi + 1e-3 * max(abs(hi), 1.0)
    sigma = 2 / (steps - 1) / math.sqrt(8 * math.log(kappa))  # kernel std in [-1, 1] units
    # padding p (share of the width) puts the extreme nodes 4 sigma inside the padded range:
    # 2p / (1 + 2p) >= 4 sigma
    needed = 4 * sigma / (2 - 8 * sigma) if sigma < 0.25 else 4.0
    margin = needed if margin is None else float(margin)
    density = None
    for it in iters:
        grid, d = lanczos_approximate_spectrum_from_iter(it, (lo, hi), int(num_points), kappa, margin)
        density = d if density is None else density + d
    density = density / len(iters)
    mass = float(torch.trapezoid(density, grid))
    per_run = n * (weights * nodes).sum(1)  # (runs,): each run's quadrature of tr(H) = P ∫ λ p(λ) dλ
    trace_std = float(per_run.std() / math.sqrt(len(per_run))) if len(per_run) > 1 else None
    return {"grid": grid.tolist(), "density": density.tolist(), "mass": mass, "nodes": nodes.tolist(),
            "weights": weights.tolist(), "trace": float(per_run.mean()), "trace_std": trace_std,
            "lanczos_steps": steps, "runs": int(runs), "kappa": kappa, "boundaries": [lo, hi],
            "matvecs": op.matvecs - before, "seconds": time.perf_counter() - start, **_describe(op)}


# --------------------------------------------------------------------------------------------
# the summary the CLI reports
# --------------------------------------------------------------------------------------------
def measure(model: nn.Module, data: Any, *, params: ParamSpec = "all", samples: int | None = 200, k: int = 1,
            probes: int = 30, trace_method: str = "hutch++", tol: float = 1e-2, max_iter: int = 100,
            seed: int = 0, batch_size: int = 200, device: torch.device | str = "cpu",
            curvature: str = "hessian") -> dict[str, Any]:
    """λmax, the top-``k`` eigenvalues and the trace of the curvature on the first ``samples``
    samples of ``data``, sharing one operator. ``probes=0`` skips the trace.

    Returns a JSON-able dict: ``{"lambda_max", "top_k", "error_bound", "trace", "trace_std",
    "trace_method", "probes", "params", "num_params", "samples", "loss", "accuracy", "curvature",
    "matvecs", "seconds", "tol", "seed"}`` (trace and trace_std None when skipped).
    """
    start = time.perf_counter()
    op = hessian_operator(model, data, params=params, batch_size=batch_size, num_samples=samples,
                          device=device, curvature=curvature)
    eig = top_eigenvalues(op, k=k, tol=tol, max_iter=max_iter, seed=seed)
    trace = hessian_trace(op, probes=probes, method=trace_method, seed=seed) if probes else None
    return {"lambda_max": eig["values"][0], "top_k": eig["values"], "error_bound": eig["error_bound"],
            "converged": eig["converged"], "trace": trace["trace"] if trace else None,
            "trace_std": trace["std"] if trace else None, "trace_method": trace_method if trace else None,
            "probes": trace["probes"] if trace else 0, "loss": op.loss, "accuracy": op.accuracy,
            "param_names": list(op.param_names), "matvecs": op.matvecs, "seconds": time.perf_counter() - start,
            "tol": tol, "seed": seed, **_describe(op)}
