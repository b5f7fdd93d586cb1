"""A tiny model and clean set for defence tests: a real ``smallcnn`` on random 28×28 images."""
import torch

from ngfkit.data import ImageTensorDataset, dataset_info
from ngfkit.models import build_model


def tiny_model(seed: int = 0) -> torch.nn.Module:
    info = dataset_info("fashion-mnist")
    torch.manual_seed(seed)
    return build_model("smallcnn", info.num_classes, info.image_shape, info.mean, info.std).eval()


def tiny_clean(n: int = 64, seed: int = 0) -> ImageTensorDataset:
    info = dataset_info("fashion-mnist")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *info.image_shape), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % info.num_classes
    return ImageTensorDataset(images, labels, info)


#: options that make each defence's run a few steps long (the rest: 5 steps at lr 0.01 for NGF's family)
QUICK = {"ft": dict(steps=3), "ft-sam": dict(steps=2), "ft-last": dict(steps=5), "fp": dict(steps=2),
         "anp": dict(iterations=2), "nad": dict(steps=2, teacher_steps=2), "i-bau": dict(rounds=1),
         "ngf-sgd-body": dict(steps=3), "lp": dict(steps=5), "ft-init": dict(steps=3),
         "fe-tuning": dict(steps=3), "fst": dict(steps=3), "fip": dict(steps=3), "fip-fast": dict(steps=3),
         "nft": dict(steps=3), "sau": dict(steps=2)}


def quick_options(name: str) -> dict:
    """The options of a few-step run of the defence ``name``."""
    return dict(QUICK.get(name, {"steps": 5, "lr": 0.01} if name.startswith("ngf") else {}))


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


LINEAR_IN, LINEAR_OUT, LINEAR_SAMPLES = 4, 3, 7


def linear_problem():
    """A float64 ``nn.Linear(4, 3)`` with inputs ``(7, 4)`` and labels ``(7,)``: small enough for
    dense Fisher matrices (the Fisher tests share it as the ``linear_problem`` fixture)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(LINEAR_IN, LINEAR_OUT).double()
    x = torch.randn(LINEAR_SAMPLES, LINEAR_IN, dtype=torch.float64)
    y = torch.randint(0, LINEAR_OUT, (LINEAR_SAMPLES,))
    return layer, x, y
