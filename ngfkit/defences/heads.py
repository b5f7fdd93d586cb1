"""The fast path of NGF: many linear heads fine-tuned at once on cached features.

With the body frozen, NGF only trains the classifier ``s = W a + b`` on cached features, and its
per-sample output gradients are known in closed form (``softmax(s) - onehot(y)``). Choosing the
strength from clean data needs one fine-tuning run per (fold, learning rate); this module runs
them all as one batch of ``M`` heads, with the same arithmetic as
:class:`~ngfkit.defences.natural_gradient.NaturalGradient` + :class:`~ngfkit.defences.natural_gradient.FisherRegulariser` inside
:func:`~ngfkit.train.train_model` (a test checks that one head here equals that generic path).
Shapes: ``M`` heads, ``B`` batch, ``C`` classes, ``D`` features (+1 for the bias column).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..curvature.fisher import fisher_labels, softmax_output_gradients, symmetric_eigh, with_bias_column


def _rotate(q_g: Tensor, m: Tensor, q_a: Tensor) -> Tensor:
    return q_g.transpose(1, 2) @ m @ q_a


def _unrotate(q_g: Tensor, m: Tensor, q_a: Tensor) -> Tensor:
    return q_g @ m @ q_a.transpose(1, 2)


def head_predictions(weight: Tensor, features: Tensor) -> Tensor:
    """Classes predicted by heads ``weight`` ``(..., C, D+1)`` (``[W, b]``) for ``features`` ``(N, D)``,
    shape ``(..., N)``."""
    return (features @ weight[..., :-1].transpose(-1, -2) + weight[..., None, :, -1]).argmax(-1)


def _batch_indices(train_sets: Sequence[Tensor], views: int, num_images: int, steps: int, batch: int,
                   generator: torch.Generator) -> Tensor:
    """``(M, steps, B)`` item indices into the flattened ``(V * N)`` features: for each head, epochs
    of shuffled items of its training images (all views), full batches only."""
    out = []
    for images in train_sets:
        items = (torch.arange(views).view(-1, 1) * num_images + images.view(1, -1)).flatten()
        per_epoch = len(items) // batch
        chunks = []
        while len(chunks) * per_epoch < steps:
            order = items[torch.randperm(len(items), generator=generator)]
            chunks.append(order[: per_epoch * batch].view(per_epoch, batch))
        out.append(torch.cat(chunks)[:steps])
    return torch.stack(out)


def fit_heads(features: Tensor, labels: Tensor, weight: Tensor, train_sets: Sequence[Tensor],
              lrs: Sequence[float], cfg, *, held_out: Sequence[Tensor] | None = None,
              on_step: Callable[[int, Tensor], None] | None = None) -> dict:
    """Fine-tune ``M = len(train_sets)`` copies of the head ``weight`` ``(C, D+1)`` with NGF.

    ``features`` ``(V, N, D)`` are cached classifier inputs (view 0 unaugmented), ``labels``
    ``(N,)``; head ``m`` trains on the images ``train_sets[m]`` (all views) with base learning
    rate ``lrs[m]``; ``cfg`` is an :class:`~ngfkit.defences.ngf.NGFConfig`. With ``held_out``,
    records each head's accuracy on its held-out images (view 0) every ``cfg.eval_every`` steps.
    ``on_step(step, heads)`` is called after every step with the step count and the heads
    ``(M, C, D+1)`` (for per-step trajectories).

    Returns ``{"weight": (M, C, D+1), "loss": (steps, M), "curve": [(step, (M,) accuracy)]}``.
    """
    views, n, _ = features.shape
    m_heads, c = len(train_sets), weight.shape[0]
    flat = with_bias_column(features.reshape(views * n, -1))
    targets = labels.repeat(views)
    smallest = min(len(s) for s in train_sets) * views
    batch = min(cfg.batch_size, smallest)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    index = _batch_indices(train_sets, views, n, cfg.steps, batch, generator).to(flat.device)
    fisher_generator = torch.Generator().manual_seed(cfg.seed)
    base_lr = torch.tensor(lrs, dtype=flat.dtype, device=flat.device).view(-1, 1, 1)

    w = weight.unsqueeze(0).repeat(m_heads, 1, 1)
    anchor = w.clone()
    momentum_buffer: Tensor | None = None
    A = G = q_a = q_g = scales = anchor_scales = None
    anchor_stats = None
    if cfg.reg_strength > 0:
        anchor_stats = []
        stats_generator = torch.Generator().manual_seed(cfg.seed)
        for images in train_sets:
            rows = images.to(flat.device)  # the clean images themselves (view 0), as the generic path
            a = flat[rows]
            logits = a @ weight.T
            chosen = fisher_labels(logits, targets[rows], cfg.fisher, stats_generator)
            anchor_stats.append((a, softmax_output_gradients(logits, chosen)))

    losses, curve = [], []
    total = max(1, cfg.steps)
    for step in range(cfg.steps):
        factor = cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * step / total))
        lr = base_lr * factor
        a = flat[index[:, step]]  # (M, B, D+1)
        y = targets[index[:, step]]  # (M, B)
        logits = a @ w.transpose(1, 2)
        probs = logits.softmax(-1)
        onehot = F.one_hot(y, c).to(a.dtype)

        if step % cfg.factor_every == 0 or step % cfg.eigen_every == 0:
            if cfg.fisher == "sampled":
                sampled = torch.multinomial(probs.reshape(-1, c).cpu(), 1, generator=fisher_generator)
                g = probs - F.one_hot(sampled.view(m_heads, -1).to(a.device), c).to(a.dtype)
            else:
                g = probs - onehot
            a_new = a.transpose(1, 2) @ a / batch
            g_new = g.transpose(1, 2) @ g / batch
            A = a_new if A is None else cfg.decay * A + (1 - cfg.decay) * a_new
            G = g_new if G is None else cfg.decay * G + (1 - cfg.decay) * g_new
            if cfg.ekfac and q_a is not None:
                fresh = (g @ q_g).pow(2).transpose(1, 2) @ (a @ q_a).pow(2) / batch
                scales = cfg.decay * scales + (1 - cfg.decay) * fresh
            if step % cfg.eigen_every == 0:
                eig_a, q_a = symmetric_eigh(A)
                eig_g, q_g = symmetric_eigh(G)
                scales = eig_g.clamp_min(0).unsqueeze(2) * eig_a.clamp_min(0).unsqueeze(1)
                if anchor_stats is not None:
                    anchor_scales = torch.stack([
                        (gm @ q_g[i]).pow(2).T @ (am @ q_a[i]).pow(2) / am.shape[0]
                        for i, (am, gm) in enumerate(anchor_stats)])

        losses.append(-(onehot * logits.log_softmax(-1)).sum(-1).mean(-1))
        grad = (probs - onehot).transpose(1, 2) @ a / batch  # (M, C, D+1)
        direction = _unrotate(q_g, _rotate(q_g, grad, q_a) / (scales + cfg.damping), q_a)
        inner = (direction * grad).sum((1, 2))
        clip = torch.sqrt(cfg.kl_clip / (lr.view(-1) ** 2 * inner.clamp_min(1e-30)))
        nu = torch.where(inner > 0, clip.clamp(max=1.0), torch.ones_like(inner)).view(-1, 1, 1)
        step_dir = nu * direction + cfg.weight_decay * w
        momentum_buffer = step_dir.clone() if momentum_buffer is None else cfg.momentum * momentum_buffer + step_dir
        w = w - lr * momentum_buffer

        if anchor_stats is not None:
            metric = scales + cfg.damping
            rotated = _rotate(q_g, w - anchor, q_a)
            rotated = rotated * metric / (metric + lr * cfg.reg_strength * anchor_scales)
            w = anchor + _unrotate(q_g, rotated, q_a)

        done = step + 1
        if on_step is not None:
            on_step(done, w)
        if held_out is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            predictions = head_predictions(w, features[0])  # (M, N)
            curve.append((done, torch.stack([
                100.0 * (predictions[i, idx] == labels[idx]).float().mean() for i, idx in enumerate(held_out)])))
    return {"weight": w, "loss": torch.stack(losses), "curve": curve}
