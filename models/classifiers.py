"""Small image classifiers (attack and adversarial-training targets): an MLP and a small CNN
for low-resolution images such as scikit-learn's 8×8 digits ``(B, 1, 8, 8)``.

Plain networks (no batch norm, no dropout), so a sample's logits never depend on its batch
mates: an attack's per-sample gradient is then the gradient of the batch's summed loss, and
train/eval modes agree.
"""

from __future__ import annotations

import math
from typing import List, Sequence

from torch import Tensor, nn

__all__ = ["MLPClassifier", "SmallCNN"]


def _check_shape(x: Tensor, in_shape: Sequence[int], name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != len(in_shape) + 1 or tuple(x.shape[1:]) != tuple(in_shape):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: {name} expects inputs (B, {', '.join(map(str, in_shape))}), got {got}")


class MLPClassifier(nn.Module):
    """``x (B, *in_shape) → logits (B, num_classes)``: flatten, ``Linear → ReLU`` per hidden
    width, a final ``Linear``.

    Args:
        in_shape: one sample's shape, e.g. ``[1, 8, 8]``.
        hidden: the hidden widths, e.g. ``[128, 128]``.
        num_classes: the number of classes ``C ≥ 2``.
    """

    def __init__(self, in_shape: List[int] = [1, 8, 8], hidden: List[int] = [128, 128],  # noqa: B006
                 num_classes: int = 10) -> None:
        super().__init__()
        if not in_shape or any(int(s) < 1 for s in in_shape):
            raise ValueError(f"in_shape: expected positive sizes, got {in_shape!r}")
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden: expected positive widths, got {hidden!r}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")
        self.in_shape = [int(s) for s in in_shape]
        widths = [math.prod(self.in_shape), *[int(h) for h in hidden]]
        layers: List[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], int(num_classes)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, *in_shape) → (B, num_classes)``."""
        _check_shape(x, self.in_shape, "MLPClassifier")
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """``x (B, C, H, W) → logits (B, num_classes)``: two ``3×3`` convolutions with ReLU (the
    second with stride 2), then a ``Linear → ReLU → Linear`` head.

    Args:
        in_channels: ``C``.
        image_size: ``[H, W]`` (the head's input size depends on it).
        channels: the two convolutions' widths.
        hidden: the head's hidden width.
        num_classes: ``≥ 2``.
    """

    def __init__(self, in_channels: int = 1, image_size: List[int] = [8, 8],  # noqa: B006
                 channels: List[int] = [16, 32], hidden: int = 64, num_classes: int = 10) -> None:  # noqa: B006
        super().__init__()
        if len(channels) != 2 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels: expected two positive widths, got {channels!r}")
        if len(image_size) != 2 or any(int(s) < 2 for s in image_size):
            raise ValueError(f"image_size: expected [H, W] with H, W >= 2, got {image_size!r}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")
        c1, c2 = int(channels[0]), int(channels[1])
        self.in_shape = [int(in_channels), int(image_size[0]), int(image_size[1])]
        self.features = nn.Sequential(nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU())
        h, w = (int(image_size[0]) + 1) // 2, (int(image_size[1]) + 1) // 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * h * w, int(hidden)), nn.ReLU(),
                                  nn.Linear(int(hidden), int(num_classes)))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) → (B, num_classes)``."""
        _check_shape(x, self.in_shape, "SmallCNN")
        return self.head(self.features(x))
