"""The small GroupNorm CNN that every hospital trains, and its class weights.

The network uses GroupNorm, never BatchNorm, for two reasons:

- Opacus computes one gradient per example for differentially private SGD, and
  BatchNorm mixes the examples of a batch, so no per-example gradient exists.
  Opacus rejects models that contain BatchNorm.
- BatchNorm's running mean and variance describe one hospital's images. Averaged
  across hospitals whose cameras and class mixes differ, they describe none of
  them. GroupNorm normalises each image on its own and keeps no running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from helpers.classes import CLASSES

# Two 2x2 max-pools halve the side twice, so the side must be a multiple of this.
SIDE_MULTIPLE = 4


class SkinLesionCNN(nn.Module):
    """Classify RGB lesion images into diagnoses with three conv blocks.

    Blocks 1 and 2 are conv 3x3, GroupNorm, ReLU and a 2x2 max-pool, and block 3
    has no pool. Global average pooling and one linear layer give the class logits. The
    channels are `width`, `2 * width` and `4 * width`.

    Args:
        n_classes: number of output logits.
        width: channels of the first block.
        side: height and width in pixels of the square input images, a multiple
            of 4 (28 and 64 are the sizes this series uses).
        groups: number of GroupNorm groups, which must divide `width`.
        seed: when given, initialise the weights from this seed without touching
            torch's global random state. When None, the weights come from the
            global state, so call `torch.manual_seed` first for a repeatable model.

    Raises:
        ValueError: on a width, side, groups or n_classes that cannot build the net.
    """

    def __init__(
        self,
        *,
        n_classes: int = len(CLASSES),
        width: int = 16,
        side: int = 28,
        groups: int = 4,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        _check_architecture(n_classes=n_classes, width=width, side=side, groups=groups)
        self.n_classes = n_classes
        self.width = width
        self.side = side
        self.groups = groups

        rng_scope = torch.random.fork_rng() if seed is not None else nullcontext()
        with rng_scope:
            if seed is not None:
                torch.manual_seed(seed)
            self.features = nn.Sequential(
                *_conv_block(3, width, groups, pool=True),
                *_conv_block(width, 2 * width, groups, pool=True),
                *_conv_block(2 * width, 4 * width, groups, pool=False),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.head = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, 3, side, side) with values in [0, 1] to logits (N, K)."""
        expected = (3, self.side, self.side)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"SkinLesionCNN expects images of shape (N, 3, {self.side}, "
                f"{self.side}), got {tuple(x.shape)}. Convert NHWC uint8 arrays "
                "with helpers.datasets.images_to_tensor, and build the model with "
                "side equal to the image side."
            )
        if not torch.is_floating_point(x):
            raise TypeError(
                f"SkinLesionCNN expects a floating-point tensor, got {x.dtype}. "
                "Convert uint8 images with helpers.datasets.images_to_tensor."
            )
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return (
            f"n_classes={self.n_classes}, width={self.width}, side={self.side}, "
            f"groups={self.groups}"
        )


def class_weights(label_counts: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Compute inverse-frequency class weights n / (K * count_k).

    K is the number of classes with at least one example and n their total count,
    so the weights averaged over the examples equal 1 (the rule of sklearn's
    `class_weight="balanced"`). A class with no examples gets weight 0: it never
    appears in the loss, and a zero weight cannot divide by zero.

    Args:
        label_counts: count per class, one entry per class (length K_total).

    Returns:
        float32 tensor of length K_total.

    Raises:
        ValueError: if the counts are not a 1-D array of non-negative integers with
            at least one positive entry.
    """
    counts = np.asarray(label_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(
            "label_counts must be a 1-D array with one count per class, got shape "
            f"{counts.shape}."
        )
    if not np.issubdtype(counts.dtype, np.number) or np.any(counts != np.round(counts)):
        raise ValueError(f"label_counts must be whole numbers, got {counts!r}.")
    if np.any(counts < 0):
        raise ValueError(f"label_counts must be non-negative, got {counts!r}.")
    if counts.sum() == 0:
        raise ValueError(
            "label_counts are all zero, so no class weight is defined. Pass the "
            "label histogram of a non-empty training set."
        )

    present = counts > 0
    n_present = int(present.sum())
    weights = np.zeros(counts.shape, dtype=np.float64)
    weights[present] = counts.sum() / (n_present * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


@torch.no_grad()
def predict_proba(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 256
) -> np.ndarray:
    """Compute class probabilities (softmax of the logits) for images in batches.

    The model runs in eval mode without gradients, and its previous train/eval
    mode is restored afterwards.

    Args:
        model: maps (N, 3, side, side) float images to (N, K) logits.
        x: float tensor (N, 3, side, side) with values in [0, 1].
        batch_size: images per forward pass. 256 was faster than 512 for the
            default CNN at 28 px on a 2-core CPU (torch 2.14).

    Returns:
        float32 array (N, K) whose rows sum to 1.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"x must be a torch.Tensor, got {type(x).__name__}. Convert NHWC uint8 "
            "arrays with helpers.datasets.images_to_tensor."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")

    was_training = model.training
    model.eval()
    try:
        batches = [
            torch.softmax(model(x[start : start + batch_size]), dim=1)
            for start in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)

    if not batches:
        n_classes = getattr(model, "n_classes", len(CLASSES))
        return np.zeros((0, n_classes), dtype=np.float32)
    return torch.cat(batches).cpu().numpy().astype(np.float32, copy=False)


def _check_architecture(*, n_classes: int, width: int, side: int, groups: int) -> None:
    for name, value in [
        ("n_classes", n_classes),
        ("width", width),
        ("side", side),
        ("groups", groups),
    ]:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r}.")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}.")
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}.")
    if groups < 1 or width % groups != 0:
        raise ValueError(
            f"width ({width}) must be a positive multiple of groups ({groups}), "
            "because GroupNorm splits every block's channels into equal groups. "
            "Choose, for example, width=16 and groups=4."
        )
    if side < SIDE_MULTIPLE or side % SIDE_MULTIPLE != 0:
        raise ValueError(
            f"side must be a positive multiple of {SIDE_MULTIPLE}, got {side}, "
            "because two 2x2 max-pools halve the image side twice. Resize the "
            "images to 28 or 64 pixels."
        )


def _conv_block(
    in_channels: int, out_channels: int, groups: int, *, pool: bool
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers
