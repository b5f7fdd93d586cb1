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

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..curvature.fisher import KFACState, eigenbasis_scales, with_bias_column
from ..train import cosine_factor
from .classifier_only import head_predictions
from .natural_gradient import head_statistics, kl_clip_scale, proximal_pull


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
    state = KFACState(cfg.damping, cfg.decay, cfg.ekfac)  # one batched state for all M heads
    anchor_scales = None
    anchor_stats = None
    if cfg.reg_strength > 0:
        # the backdoored head's Fisher on each head's clean images themselves (view 0), as the generic path
        stats_generator = torch.Generator().manual_seed(cfg.seed)
        anchor_stats = [head_statistics(flat[rows], weight, targets[rows], cfg.fisher, stats_generator)
                        for rows in (images.to(flat.device) for images in train_sets)]

    losses, curve = [], []
    total = max(1, cfg.steps)
    for step in range(cfg.steps):
        lr = base_lr * cosine_factor(step, total, cfg.final_lr_ratio)
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
            state.update(a, g)
            if step % cfg.eigen_every == 0:
                state.refresh_eigenbasis()
                if anchor_stats is not None:
                    anchor_scales = torch.stack([eigenbasis_scales(am, gm, state.q_a[i], state.q_g[i])
                                                 for i, (am, gm) in enumerate(anchor_stats)])

        losses.append(-(onehot * logits.log_softmax(-1)).sum(-1).mean(-1))
        grad = (probs - onehot).transpose(1, 2) @ a / batch  # (M, C, D+1)
        direction = state.solve(grad)
        nu = kl_clip_scale((direction * grad).sum((1, 2)), lr.view(-1), cfg.kl_clip).view(-1, 1, 1)
        step_dir = nu * direction + cfg.weight_decay * w
        momentum_buffer = step_dir.clone() if momentum_buffer is None else cfg.momentum * momentum_buffer + step_dir
        w = w - lr * momentum_buffer

        if anchor_stats is not None:
            w = anchor + proximal_pull(w - anchor, state, anchor_scales, lr, cfg.reg_strength)

        done = step + 1
        if on_step is not None:
            on_step(done, w)
        if held_out is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            predictions = head_predictions(w, features[0])  # (M, N)
            curve.append((done, torch.stack([
                100.0 * (predictions[i, idx] == labels[idx]).float().mean() for i, idx in enumerate(held_out)])))
    return {"weight": w, "loss": torch.stack(losses), "curve": curve}
