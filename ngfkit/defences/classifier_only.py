"""The classifier-only protocol: defences that change nothing but the final linear layer.

With the body frozen (eval mode), such a defence only ever sees the classifier's inputs on the
clean set, so those are computed once (:func:`cache_features`, :class:`FeatureDataset`) and every
step runs on them. The protocol, used by :func:`~ngfkit.defences.purify`, the benchmark, the
studies and the book alike:

- :meth:`HeadDefence.head_only` says whether a configured defence changes only ``model``'s
  classifier (then its history says ``"changed": "head"``, and a test set can be scored from
  cached classifier inputs);
- :meth:`HeadDefence.head_features` gives the cached features it trains on;
- :meth:`HeadDefence.fit_heads` trains one head per strength value on them, calling
  ``on_step(step, heads)`` after every step (for trajectories);
- a :class:`FeatureCache` passed as ``features=`` shares the features between several defences
  run on one model; nothing is cached behind the caller's back.

Shapes: ``V`` views, ``N`` images, ``D`` features, ``C`` classes, ``M`` heads; a head is the
matrix ``[W, b]`` of shape ``(C, D + 1)``.
"""
from __future__ import annotations

import copy
import hashlib
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..batches import iterate_batches, random_crop_flip
from ..models import classifier_layer
from ..train import to_channels_last, use_channels_last
from .base import Defence

OnStep = Callable[[int, Tensor], None]


def layer_matrix(layer: nn.Linear) -> Tensor:
    """``[W, b]`` as one ``(D_out, D_in [+1])`` matrix (a copy)."""
    if layer.bias is None:
        return layer.weight.detach().clone()
    return torch.cat([layer.weight.detach(), layer.bias.detach().view(-1, 1)], dim=1)


def set_layer_matrix(layer: nn.Linear, matrix: Tensor) -> None:
    """Write ``[W, b]`` ``(D_out, D_in [+1])`` into ``layer``."""
    d_in = layer.weight.shape[1]
    with torch.no_grad():
        layer.weight.copy_(matrix[:, :d_in])
        if layer.bias is not None:
            layer.bias.copy_(matrix[:, d_in])


def layer_gradient(layer: nn.Linear) -> Tensor:
    """``[dW, db]`` as one ``(D_out, D_in [+1])`` matrix."""
    if layer.bias is None:
        return layer.weight.grad
    return torch.cat([layer.weight.grad, layer.bias.grad.view(-1, 1)], dim=1)


def set_layer_gradient(layer: nn.Linear, grad: Tensor) -> None:
    d_in = layer.weight.shape[1]
    layer.weight.grad.copy_(grad[:, :d_in])
    if layer.bias is not None:
        layer.bias.grad.copy_(grad[:, d_in])


def head_predictions(weight: Tensor, features: Tensor) -> Tensor:
    """Classes predicted by heads ``weight`` ``(..., C, D+1)`` for ``features`` ``(N, D)``: ``(..., N)``."""
    return (features @ weight[..., :-1].transpose(-1, -2) + weight[..., None, :, -1]).argmax(-1)


class FeatureDataset(Dataset):
    """Cached classifier inputs of ``V`` views of ``N`` images, ``features`` ``(V, N, D)``, with labels ``(N,)``.

    View 0 is the unaugmented image; items run over all views (``len = V * N``). ``subset``
    selects images (with all their views), ``original`` keeps view 0 only.
    """

    def __init__(self, features: Tensor, labels: Tensor):
        if features.dim() == 2:
            features = features.unsqueeze(0)
        self.features = features
        self.labels = labels
        self.targets = labels.repeat(features.shape[0])

    def __len__(self) -> int:
        return self.features.shape[0] * self.features.shape[1]

    def __getitem__(self, i: int):
        return self.features.flatten(0, 1)[i], int(self.targets[i])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.features.flatten(0, 1)[indices], self.targets[indices]

    def subset(self, indices: Tensor) -> "FeatureDataset":
        return FeatureDataset(self.features[:, indices], self.labels[indices])

    def original(self) -> "FeatureDataset":
        return FeatureDataset(self.features[:1], self.labels)


@torch.no_grad()
def cache_features(model: nn.Module, layer: nn.Linear, dataset: Dataset, *, views: int = 0, seed: int = 0,
                   batch_size: int = 256, device: torch.device | str = "cpu") -> FeatureDataset:
    """Run the frozen ``model`` (eval mode) once over ``dataset`` and keep ``layer``'s inputs, for the
    images themselves and for ``views`` randomly cropped and flipped copies of each."""
    captured: list[Tensor] = []
    labels: list[Tensor] = []
    generator = torch.Generator().manual_seed(seed)
    handle = layer.register_forward_hook(lambda m, args, out: captured.append(args[0].detach().flatten(1)))
    was_training = model.training
    use_channels_last(model).eval()
    try:
        for x, y in iterate_batches(dataset, batch_size, device=device):
            model(to_channels_last(x))
            for _ in range(views):
                model(to_channels_last(random_crop_flip(x, generator, pad=max(1, x.shape[-1] // 14))))
            labels.append(y)
    finally:
        handle.remove()
        model.train(was_training)
    per_batch = [torch.stack(captured[i : i + views + 1]) for i in range(0, len(captured), views + 1)]
    return FeatureDataset(torch.cat(per_batch, dim=1), torch.cat(labels))


def weights_digest(model: nn.Module) -> str:
    """SHA-1 of every tensor in ``model``'s state dict (names and bytes)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Classifier inputs computed once per (model weights, layer, dataset, views, seed, device).

    Pass one instance as ``features=`` to several :func:`~ngfkit.defences.purify` calls on the same
    model (the book runs five NGF variants and ``ft-last`` on one model): the body then runs over
    the clean set once. A model with other weights (compared by content) or another dataset
    object is computed anew. The cache holds the datasets it saw, so their ids stay unique.
    """

    def __init__(self):
        self._entries: dict[tuple, tuple[Dataset, FeatureDataset]] = {}
        self._digests: dict[int, tuple[nn.Module, str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def features(self, model: nn.Module, layer: nn.Linear, dataset: Dataset, *, views: int = 0, seed: int = 0,
                 batch_size: int = 256, device: torch.device | str = "cpu") -> FeatureDataset:
        """:func:`cache_features` of these arguments, computed on the first call only."""
        layer_name = next((n for n, m in model.named_modules() if m is layer), None)
        key = (weights_digest(model), layer_name, id(dataset), views, seed, batch_size, str(device))
        if key not in self._entries:
            self._entries[key] = (dataset, cache_features(model, layer, dataset, views=views, seed=seed,
                                                          batch_size=batch_size, device=device))
        return self._entries[key][1]


def features_of(model: nn.Module, layer: nn.Module, dataset: Dataset, cache: FeatureCache | None,
                **options) -> FeatureDataset:
    """:func:`cache_features` of these arguments, read from ``cache`` when one is given."""
    if cache is not None:
        return cache.features(model, layer, dataset, **options)
    return cache_features(model, layer, dataset, **options)


class HeadDefence(Defence):
    """Base of the defences that train the classifier alone, on cached features of the clean set.

    Subclasses implement :meth:`fit_heads`; :meth:`run` and :meth:`path` follow from it. A
    subclass whose configuration can also train the body overrides :meth:`head_only` and handles
    that case in its own :meth:`run`. The config must have ``augment`` (views per image) and ``seed``.
    """

    needs_classifier = True

    def head_only(self, model: nn.Module) -> bool:
        return True

    def on_cached_features(self, model: nn.Module) -> bool:
        """Whether this configuration trains on cached features through :meth:`fit_heads`."""
        return self.head_only(model)

    def head_features(self, model: nn.Module, clean_data: Dataset, *, device: torch.device,
                      features: FeatureCache | None = None) -> FeatureDataset:
        """The classifier's inputs on ``clean_data`` and ``augment`` views of each (view 0 unaugmented)."""
        return features_of(model, classifier_layer(model), clean_data, features, views=self.config.augment,
                           seed=self.config.seed, device=device)

    def fit_heads(self, data: FeatureDataset, head: nn.Linear, values: Sequence, *,
                  on_step: OnStep | None = None) -> list[Tensor]:
        """Train one copy of ``head`` per strength value on all of ``data`` (``head`` is left as it is);
        returns the trained ``[W, b]`` matrices, each ``(C, D [+1])``. ``on_step(step, heads)`` sees the
        ``(M, C, D [+1])`` heads after every step."""
        raise NotImplementedError

    def with_heads(self, model: nn.Module, heads: Sequence[Tensor]) -> list[nn.Module]:
        """Copies of ``model`` whose classifier is replaced by each of ``heads``."""
        tuned = []
        for weight in heads:
            copy_ = copy.deepcopy(model)
            set_layer_matrix(classifier_layer(copy_), weight)
            tuned.append(copy_.eval())
        return tuned

    def run(self, model, clean_data, *, device, progress, features=None):
        model = copy.deepcopy(model).to(device).eval()
        data = self.head_features(model, clean_data, device=device, features=features)
        value = getattr(self.config, self.strength)
        [weight] = self.fit_heads(data, classifier_layer(model), [value])
        [tuned] = self.with_heads(model, [weight])
        return tuned, {"changed": "head", "setting": {self.strength: value}}

    def path(self, model, clean_data, values, *, device, progress, features=None):
        model = copy.deepcopy(model).to(device).eval()
        data = self.head_features(model, clean_data, device=device, features=features)
        heads = self.fit_heads(data, classifier_layer(model), list(values))
        yield from zip(values, self.with_heads(model, heads))
