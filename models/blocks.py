"""Learned building blocks for unrolled networks (plug-and-play priors)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from unroll.prox import Regularizer

__all__ = ["CNNProx"]


class CNNProx(Regularizer):
    """A small residual CNN used as a learned proximal operator (a denoiser in place of a prox).

    ``prox(x, step) = x + scale · net(x)`` with ``net`` = ``depth`` 3×3 convolutions (padding 1,
    so the image size is kept) with ReLUs in between: ``Conv(C→F) ReLU [Conv(F→F) ReLU]… Conv(F→C)``.
    The last convolution is zero-initialised (weight and bias), so the untrained prox is the
    identity and ``ProxGradStep(CNNProx(...))`` starts as plain gradient descent.

    It plugs into :class:`~unroll.steps.ProxGradStep` like any :class:`~unroll.prox.Regularizer`,
    but it is not the prox of a known ``g``: ``step`` is accepted for the common signature and
    **ignored** (the network learns its own strength), and :meth:`value` is not defined.

    Args:
        channels: image channels ``C``.
        features: feature maps ``F`` of the hidden layers.
        depth: number of convolutions (``>= 2``).
        scale: fixed factor on the residual.

    Shapes:
        ``prox``: ``(B, C, H, W) → (B, C, H, W)`` (real data).
    """

    def __init__(self, channels: int = 1, features: int = 16, depth: int = 3, scale: float = 1.0) -> None:
        super().__init__()
        for name, v, low in (("channels", channels, 1), ("features", features, 1), ("depth", depth, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"scale: expected a float, got {scale!r}")
        self.channels, self.features, self.depth, self.scale = channels, features, depth, float(scale)
        layers = []
        widths = [channels] + [features] * (depth - 1) + [channels]
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1))
            if i < depth - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def prox(self, x: Tensor, step: Optional[object] = None) -> Tensor:
        """``x + scale · net(x)``: ``(B, C, H, W) → (B, C, H, W)``; ``step`` is ignored."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.is_complex():
            raise TypeError(f"x: CNNProx works on real images, got a complex tensor ({x.dtype})")
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x: expected shape (B, {self.channels}, H, W), got {tuple(x.shape)}")
        return x + self.scale * self.net(x)

    def forward(self, x: Tensor, step: Optional[object] = None) -> Tensor:
        """Alias for :meth:`prox`."""
        return self.prox(x, step)

    def value(self, x: Tensor) -> Tensor:
        raise NotImplementedError(
            "CNNProx.value: a learned proximal operator has no regulariser value g(x) (it is a denoiser, not "
            "the prox of a known function); use a fixed budget or the relative change as a stopping rule, "
            "and do not record the objective (record_objective=False)"
        )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, features={self.features}, depth={self.depth}, scale={self.scale}"
