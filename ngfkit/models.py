"""Model registry.

Every model starts with a :class:`Normalize` layer, so attacks and defences work on images in
``[0, 1]`` pixel space, and names its final classifier layer in ``classifier_name`` so that
NGF can find the layer it fine-tunes.
"""
from __future__ import annotations

import copy

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .batches import iterate_batches
from .errors import NgfkitError
from .registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` for input ``(N, C, H, W)`` in ``[0, 1]``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``normalize -> body -> head``; ``features(x)`` is the head's input ``(N, D)``."""

    classifier_name = "head"

    def __init__(self, normalize: nn.Module, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.head = head

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@MODELS.register("smallcnn")
def smallcnn(num_classes: int, in_channels: int, mean, std, width: int = 32, hidden: int = 256) -> Classifier:
    """conv-conv-pool-conv-conv-pool-fc-fc with BatchNorm; 0.87 M parameters at 28×28 (width 32)."""
    body = nn.Sequential(
        *_conv_bn(in_channels, width), *_conv_bn(width, width), nn.MaxPool2d(2),
        *_conv_bn(width, 2 * width), *_conv_bn(2 * width, 2 * width), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(7), nn.Flatten(),
        nn.Linear(2 * width * 49, hidden), nn.ReLU(inplace=True),
    )
    return Classifier(Normalize(mean, std), body, nn.Linear(hidden, num_classes))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


@MODELS.register("preact-resnet18")
def preact_resnet18(num_classes: int, in_channels: int, mean, std) -> Classifier:
    """PreAct ResNet-18 for 32×32 input, the backbone of the NGF paper's CIFAR10 tables."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.BatchNorm2d(512), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(Normalize(mean, std), nn.Sequential(*layers), nn.Linear(512, num_classes))


def _torchvision_resnet(builder: Callable[..., nn.Module]) -> Callable[..., Classifier]:
    def make(num_classes: int, in_channels: int, mean, std) -> Classifier:
        net = builder(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        head = net.fc
        net.fc = nn.Identity()
        return Classifier(Normalize(mean, std), net, head)

    make.__doc__ = f"torchvision {builder.__name__} (random init) for ImageNet-size input."
    return make


def _register_torchvision() -> None:
    from torchvision.models import resnet18, resnet50

    MODELS.register("resnet18")(_torchvision_resnet(resnet18))
    MODELS.register("resnet50")(_torchvision_resnet(resnet50))


_register_torchvision()


def build_model(arch: str, num_classes: int, image_shape: Sequence[int], mean, std) -> Classifier:
    """Build a registered architecture for images of ``image_shape = (C, H, W)``."""
    factory = MODELS.get(arch)
    if num_classes < 2:
        raise NgfkitError(f"a classifier needs at least 2 classes, got {num_classes}")
    return factory(num_classes=num_classes, in_channels=int(image_shape[0]), mean=mean, std=std)


def classifier_layer(model: nn.Module, name: str | None = None) -> nn.Linear:
    """The ``nn.Linear`` layer called ``name`` (default: the model's ``classifier_name``)."""
    name = name or getattr(model, "classifier_name", None)
    if name is None:
        raise NgfkitError("the model has no classifier_name; pass the layer name explicitly (e.g. --layers fc)")
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Linear):
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise NgfkitError(f"layer {name!r} is not an nn.Linear of this model; Linear layers are: {', '.join(linear)}")
    return module


def find_classifier(model: nn.Module, clean_data: Dataset | None = None, *,
                    layer: str | None = None) -> tuple[str, nn.Linear]:
    """``(name, module)`` of the classifier, the ``nn.Linear`` whose output is the model's logits.

    ``layer`` names it explicitly; else the model's ``classifier_name`` (ngfkit's architectures);
    else, with ``clean_data``, every ``nn.Linear`` is watched by a forward hook on one batch and the
    one whose output equals the model's output is it; without data, a model with a single
    ``nn.Linear`` has that one. Anything else is a one-line error naming the candidates and ``layer=``.
    """
    modules = dict(model.named_modules())
    linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    name = layer or getattr(model, "classifier_name", None)
    if name is not None:
        return name, classifier_layer(model, name)
    if not linear:
        raise NgfkitError("the model has no nn.Linear layer, so no classifier to fine-tune; "
                          "pass layer=NAME naming its final linear layer")
    if clean_data is None or len(linear) == 1:
        if len(linear) == 1:
            return linear[0], modules[linear[0]]
        raise NgfkitError(f"the model has several nn.Linear layers ({', '.join(linear)}); pass layer=NAME "
                          f"naming the one that outputs the logits")
    outputs: dict[str, Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda m, args, out, n=n: outputs.__setitem__(n, out))
               for n in linear]
    was_training = model.training
    try:
        x, _ = next(iterate_batches(clean_data, 2, device=next(model.parameters()).device))
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    found = [n for n, out in outputs.items() if isinstance(logits, Tensor) and out.shape == logits.shape
             and torch.equal(out, logits)]
    if len(found) != 1:
        what = "none of" if not found else "several of"
        raise NgfkitError(f"{what} the model's nn.Linear layers ({', '.join(found or linear)}) output its logits "
                          f"directly; pass layer=NAME naming its classifier")
    return found[0], modules[found[0]]


def named_classifier(model: nn.Module, clean_data: Dataset, *, layer: str | None = None,
                     required: bool = True) -> nn.Module:
    """``model`` itself when it names its classifier (``classifier_name``, as ngfkit's architectures do)
    and no other ``layer`` is asked for; else a copy that does, the classifier found by
    :func:`find_classifier` (a forward hook on one clean batch). With
    ``required=False`` a model without a findable classifier is returned as it is."""
    if layer is None and getattr(model, "classifier_name", None) is not None:
        return model
    try:
        name, _ = find_classifier(model, clean_data, layer=layer)
    except NgfkitError:
        if required:
            raise
        return model
    model = copy.deepcopy(model)
    model.classifier_name = name
    return model


def reinitialise(layer: nn.Linear, seed: int) -> None:
    """Draw ``layer``'s weight and bias afresh from ``U(±1/√D)`` (``D`` its inputs; the authors' and
    ``nn.Linear``'s bound) with a generator seeded by ``seed``, the same values on every device."""
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / layer.in_features ** 0.5
    with torch.no_grad():
        for param in (layer.weight, layer.bias):
            if param is not None:
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
