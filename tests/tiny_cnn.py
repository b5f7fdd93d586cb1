"""A user's own tiny model and data for the defence tests: a CNN that is not an ngfkit architecture
(BatchNorm, a hidden Linear, the classifier ``out`` found by a forward hook) and a plain
``TensorDataset`` of 8×8 images whose brightness follows their label."""
import torch
from torch import nn
from torch.utils.data import TensorDataset


class TinyCNN(nn.Module):
    """Not an ngfkit architecture: BatchNorm, a hidden Linear, the classifier ``out`` found by a hook."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.hidden = nn.Linear(16, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(self.conv(x))))


def tiny_model(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN().eval()


def tiny_data(n: int = 24) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = (torch.rand(n, 1, 8, 8, generator=g) * 0.5 + labels.view(-1, 1, 1, 1) * 0.25).clamp(0, 1)
    return TensorDataset(images, labels.to(torch.int64))


def changed(before: dict, after: dict) -> set:
    """Names of the state-dict entries that differ between two snapshots."""
    return {k for k in before if not torch.equal(before[k], after[k])}
