"""Random images and image datasets for the attack tests (seeded, in the loaders' exact formats)."""
import torch

from ngfkit.data import CIFAR10, FASHION_MNIST, ImageTensorDataset


def rand_images(n: int, shape, seed: int = 0) -> torch.Tensor:
    """``n`` float images in ``[0, 1]`` of ``shape`` (C, H, W)."""
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def uint8_dataset(n: int, shape, seed: int = 0) -> ImageTensorDataset:
    """``n`` random uint8 images of Fashion-MNIST's or CIFAR-10's shape, labels 0..9 in turn."""
    info = FASHION_MNIST if tuple(shape) == FASHION_MNIST.image_shape else CIFAR10
    images = torch.randint(0, 256, (n, *info.image_shape), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    return ImageTensorDataset(images, torch.arange(n) % 10, info)
