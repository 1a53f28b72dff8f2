"""Attacks on an undefended federation: gradient inversion and membership inference.

Gradient inversion takes the server's point of view. An honest-but-curious server
follows the protocol but studies what it receives. It has the model
architecture and the global weights it sent, and it set the hospitals' training
settings (learning rate, local epochs, batch size and optimizer) itself.
It receives an `Update` (trained minus global weights) and its `n_samples`. It
optimises dummy images, and soft labels where the labels cannot be inferred, until
re-running the hospital's local training on them from the global weights gives an
update of the same direction (Geiping et al. 2020, "Inverting Gradients - How easy
is it to break privacy in federated learning?").

Membership inference looks at a trained model alone. It scores each example by how
well the model fits it: the loss-threshold attack (Yeom et al. 2018, "Privacy Risk
in Machine Learning: Analyzing the Connection to Overfitting") uses the loss
itself, and the offline likelihood-ratio attack (Carlini et al. 2022, "Membership
Inference Attacks From First Principles") compares it with the same example's
scores under reference models trained without it.

Both work with any `nn.Module` that maps float images (N, 3, side, side) in [0, 1]
to logits (N, K), run on the CPU and are deterministic from their seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn
from torch.func import functional_call
from tqdm.std import tqdm

from helpers.datasets import images_to_tensor
from helpers.federated import train_pooled
from helpers.hospital import Update

# Learning-rate decay of the image optimisation: x0.1 after 3/8, 5/8 and 7/8 of
# the iterations, the schedule of Geiping et al. 2020's code (inversefed).
DECAY_POINTS = (3 / 8, 5 / 8, 7 / 8)
DECAY_FACTOR = 0.1

# Structural similarity constants and Gaussian window of Wang et al. 2004, "Image
# Quality Assessment: From Error Visibility to Structural Similarity".
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5

# The false-positive rate at which attacks report their true-positive rate.
LOW_FPR = 0.01

Images = torch.Tensor | np.ndarray


# Gradient inversion: the server re-runs a hospital's local training.


def simulate_local_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    lr: float,
    local_epochs: int = 1,
    batch_size: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    class_weights: torch.Tensor | None = None,
    orders: Sequence[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Re-run a hospital's local SGD from the model's weights and return the update.

    The steps are those of `helpers.hospital.sgd_local_step`: each local epoch
    visits the images in minibatches of `batch_size`, the loss is the
    (class-weighted) mean cross-entropy, and torch's SGD rule applies momentum and
    weight decay. The weights are passed through `torch.func.functional_call`, so
    `model` itself is not changed. When `images` or float `labels` require
    gradients, the returned update is differentiable with respect to them through
    every step, which is how Geiping et al. 2020 invert several local updates.

    Args:
        model: the global model, in the state the hospital received it.
        images: float tensor (N, 3, side, side) in [0, 1]. Another float dtype
            (float16, float64) is converted to the dtype of the model's weights.
        labels: int64 class indices (N,) in 0..K-1, or float class probabilities
            (N, K) whose rows sum to 1 (soft labels, whose cross-entropy weights
            each class by its share).
        lr: the hospital's learning rate.
        local_epochs: passes over the images.
        batch_size: images per SGD step. The number of local steps is
            local_epochs * ceil(N / batch_size).
        momentum, weight_decay: the hospital's SGD settings.
        class_weights: per-class loss weights (K,), finite and >= 0 and positive
            for every class in `labels`, or None.
        orders: one permutation of range(N) per local epoch, the order in which
            the hospital visited its images. None visits them in the given order
            in every epoch, which is all an attacker can assume. With one local
            epoch the order changes only which images share a batch, and the
            attacker's dummy images are unordered anyway.

    Returns:
        Trained minus starting weights for every parameter name, as in an Update.
        Buffers are left out: BatchNorm running statistics would not be matched.

    NOTE: the model runs in train mode, so dropout, if the model has any, draws
    masks of its own and the update differs from the hospital's.

    Raises:
        TypeError: if `images` is not a float tensor or `labels` are neither
            integer class indices nor float probabilities.
        ValueError: on mismatched shapes, images outside [0, 1] or NaN, labels
            outside 0..K-1, soft labels that are not probabilities, invalid
            class weights, settings or orders, or an update with NaN or infinite
            values (local training diverged).
    """
    settings = _training_settings(
        lr=lr,
        local_epochs=local_epochs,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    dtype = _parameter_dtype(model)
    images = _check_training_images(images, dtype)
    n_classes = _n_logits(model, images[:1].detach())
    targets = _check_targets(labels, len(images), n_classes, dtype)
    weights = _check_class_weights(class_weights, n_classes, dtype)
    _check_example_weights(targets, weights)
    epoch_orders = _epoch_orders(orders, len(images), settings.pop("local_epochs"))

    delta = _replay_local_training(
        model,
        images,
        targets,
        epoch_orders=epoch_orders,
        class_weights=weights,
        **settings,
    )

    if not all(torch.all(torch.isfinite(value.detach())) for value in delta.values()):
        raise ValueError(
            "The simulated update contains NaN or infinite values: the local "
            f"training diverged with lr={settings['lr']!r}. Lower lr."
        )
    return delta


def infer_label(model: nn.Module, update: Update) -> int:
    """Read the label of a one-image update off its last layer (iDLG).

    With cross-entropy on one image, the gradient of the last layer's bias is
    softmax minus one-hot: negative for the true class only, positive for every
    other class. The update is minus the learning rate times that gradient, so
    its only positive entry is the label (Zhao et al. 2020, "iDLG: Improved Deep
    Leakage from Gradients"). Every further local step on the same image adds a
    term of the same signs, as do momentum and positive class weights, so the
    rule holds for any number of local epochs. Without a bias, the row sums of
    the last weight update have the same signs when the layer's inputs are
    non-negative (after a ReLU), which holds for SkinLesionCNN.

    Assumes: the update comes from one image, plain cross-entropy, no weight
    decay on the last layer. Under differential privacy's noise the largest entry
    can be another class, which is the point of the noise.

    Args:
        model: the global model (used to find its last linear layer).
        update: the hospital's update, with n_samples 1.

    Returns:
        The index of the largest entry, which is the label under the assumptions.

    Raises:
        ValueError: if the update is from more than one image, or the model has no
            final nn.Linear layer whose update the update contains.
    """
    if update.n_samples != 1:
        raise ValueError(
            f"infer_label needs an update from one image, got n_samples "
            f"{update.n_samples}. With several images the bias update mixes their "
            "labels: pass labels=None to invert_update to optimise soft labels."
        )
    name, layer = _last_linear(model)
    bias_key, weight_key = f"{name}.bias", f"{name}.weight"

    if layer.bias is not None and bias_key in update.delta:
        evidence = update.delta[bias_key].detach()
    elif weight_key in update.delta:
        evidence = update.delta[weight_key].detach().sum(dim=1)
    else:
        raise ValueError(
            f"The update has no entry {bias_key!r} or {weight_key!r} for the "
            "model's last linear layer. Pass an update of this model."
        )
    return int(torch.argmax(evidence))


@dataclass(frozen=True)
class InversionResult:
    """The images and labels a gradient-inversion attack recovered from one update.

    Attributes:
        images: reconstructed images (N, 3, side, side) in [0, 1].
        labels: class index per image: given, inferred, or the most likely class
            of the optimised soft labels.
        label_source: "given", "inferred" (from the last layer) or "optimised".
        soft_labels: the optimised class probabilities (N, K), or None.
        matching_loss: final cosine distance between the simulated and the
            observed update, for the best restart (0 would match exactly).
        loss_history: cosine distance at every iteration of the best restart.
        restart_losses: final cosine distance of every restart.
    """

    images: torch.Tensor
    labels: torch.Tensor
    label_source: str
    soft_labels: torch.Tensor | None
    matching_loss: float
    loss_history: list[float]
    restart_losses: list[float]


def invert_update(
    model: nn.Module,
    update: Update,
    *,
    lr: float,
    local_epochs: int = 1,
    batch_size: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    class_weights: torch.Tensor | None = None,
    labels: torch.Tensor | np.ndarray | None = None,
    side: int | None = None,
    iterations: int = 500,
    step_size: float = 0.05,
    tv_weight: float = 0.1,
    restarts: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> InversionResult:
    """Reconstruct a hospital's training images from its update (Geiping et al. 2020).

    The attacker optimises n_samples dummy images so that the update simulated by
    `simulate_local_update` from the global weights points the same way as the
    observed one. The objective is 1 - cosine similarity of the two updates
    (all parameters concatenated) plus `tv_weight` times the images' total
    variation (mean absolute difference of neighbouring pixels), a prior for
    natural images. Adam steps on the sign of the gradient, with the step size cut
    tenfold after 3/8, 5/8 and 7/8 of the iterations, and the pixels are clamped
    to [0, 1] after every step. Each restart starts from other uniform noise, and
    the restart with the lowest final matching loss wins, because the attacker has
    no access to the true images.

    Labels: `labels` given means the attacker has them. Otherwise a one-image
    update gives its label exactly (`infer_label`), and for several images the
    attacker optimises soft labels along with the images (Zhu et al. 2019, "Deep
    Leakage from Gradients").

    NOTE: SkinLesionCNN pools its last feature map globally, so its update is
    almost unchanged when the image is shifted by a pixel or two. Reconstructions
    then recover colours and the rough layout better than exact positions, which
    lowers their PSNR against the true image.

    Args:
        model: the global model the hospital trained from, not changed.
        update: the hospital's update. Its n_samples sets the number of images.
        lr, local_epochs, batch_size, momentum, weight_decay, class_weights: the
            hospital's training settings (see `simulate_local_update`).
        labels: the true labels (N,) in 0..K-1, if the attacker has them.
        side: image side in pixels. Defaults to `model.side`.
        iterations: optimisation steps per restart.
        step_size: Adam's initial step size, in pixel units.
        tv_weight: weight of the total-variation prior.
        restarts: independent starts, of which the best-matching is kept.
        seed: seed of the starting noise and soft labels.
        progress: show a tqdm bar on stderr, unless the CI variable is set.

    Returns:
        InversionResult with the best restart's images and labels.

    Raises:
        TypeError: if `update` is not an Update or `labels` are not integers.
        ValueError: on invalid settings or class weights, an update without the
            model's parameters, an all-zero or non-finite update, or labels of
            the wrong length or outside 0..K-1.
    """
    settings = _training_settings(
        lr=lr,
        local_epochs=local_epochs,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    n_images = _check_update(model, update)
    iterations = _check_int(iterations, "iterations")
    restarts = _check_int(restarts, "restarts")
    step_size = _check_real(step_size, "step_size")
    if step_size <= 0:
        raise ValueError(f"step_size must be positive, got {step_size!r}.")
    tv_weight = _check_real(tv_weight, "tv_weight")
    if tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight!r}.")
    seed = _check_int(seed, "seed", minimum=0)

    side = _image_side(model, side)
    dtype = _parameter_dtype(model)
    n_classes = _n_logits(model, torch.zeros(1, 3, side, side, dtype=dtype))
    weights = _check_class_weights(class_weights, n_classes, dtype)
    known_labels, label_source = _attack_labels(
        model, update, labels, n_images, n_classes
    )
    if known_labels is not None:
        _check_example_weights(known_labels, weights)
    observed = _flatten(update.delta, [name for name, _ in model.named_parameters()])
    observed = observed.to(dtype)
    epoch_orders = _epoch_orders(None, n_images, settings.pop("local_epochs"))
    settings.update(epoch_orders=epoch_orders, class_weights=weights)

    bar = tqdm(
        total=iterations * restarts,
        desc="gradient inversion",
        disable=not progress or bool(os.environ.get("CI")),
    )
    runs = []
    with bar:
        for restart in range(restarts):
            generator = torch.Generator().manual_seed(_restart_seed(seed, restart))
            runs.append(
                _invert_once(
                    model,
                    observed,
                    known_labels,
                    shape=(n_images, 3, side, side),
                    dtype=dtype,
                    n_classes=n_classes,
                    settings=settings,
                    iterations=iterations,
                    step_size=step_size,
                    tv_weight=tv_weight,
                    generator=generator,
                    bar=bar,
                )
            )

    best = min(runs, key=lambda run: run["loss_history"][-1])
    soft = best["soft_labels"]
    result_labels = known_labels if soft is None else soft.argmax(dim=1)
    return InversionResult(
        images=best["images"],
        labels=result_labels,
        label_source=label_source,
        soft_labels=soft,
        matching_loss=best["loss_history"][-1],
        loss_history=best["loss_history"],
        restart_losses=[run["loss_history"][-1] for run in runs],
    )


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Compute the mean absolute difference between neighbouring pixels.

    The anisotropic total variation used as the image prior by Geiping et al.
    2020: the mean over vertical neighbours plus the mean over horizontal ones.
    """
    vertical = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean()
    horizontal = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean()
    return vertical + horizontal


# Gradient inversion: how close the reconstruction is.


def psnr(true_images: Images, reconstructed: Images) -> np.ndarray:
    """Compute the peak signal-to-noise ratio of each image pair, in dB.

    PSNR = 10 log10(1 / MSE) for pixel values in [0, 1]: 20 dB is a mean squared
    error of 0.01, and every 10 dB more divides the error by ten. Identical
    images give infinity. The error is computed in float64 when either input is
    float64, and in float32 otherwise.

    Args:
        true_images, reconstructed: float tensors (N, 3, H, W) in [0, 1], or
            uint8 arrays (N, H, W, 3), paired by index.

    Returns:
        float64 array (N,).

    Raises:
        TypeError: on other types or dtypes.
        ValueError: on other shapes, empty or unequal batches, or float values
            that are NaN or outside [0, 1].
    """
    truth, guess = _image_pair(true_images, reconstructed)
    mse = ((truth - guess) ** 2).flatten(1).mean(dim=1)
    with np.errstate(divide="ignore"):
        return (10 * np.log10(1 / mse.numpy())).astype(np.float64)


def ssim(true_images: Images, reconstructed: Images) -> np.ndarray:
    """Compute the structural similarity of each image pair (Wang et al. 2004).

    Local means, variances and covariance come from an 11 x 11 Gaussian window of
    standard deviation 1.5 over every position where it fits, per colour channel,
    with C1 = (0.01)^2 and C2 = (0.03)^2 for the data range 1. The index is their
    mean over positions and channels: 1 for identical images, near 0 for
    unrelated ones.

    Args:
        true_images, reconstructed: as in `psnr`, at least 11 pixels a side.

    Returns:
        float64 array (N,), computed in float64.

    Raises:
        TypeError, ValueError: on invalid images, as in `psnr`.
        ValueError: on images smaller than the window.
    """
    truth, guess = _image_pair(true_images, reconstructed)
    if min(truth.shape[2:]) < SSIM_WINDOW:
        raise ValueError(
            f"ssim needs images of at least {SSIM_WINDOW} pixels a side, got "
            f"{tuple(truth.shape[2:])}."
        )
    truth, guess = truth.double(), guess.double()
    channels = truth.shape[1]
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).expand(channels, 1, -1, -1)

    def local_mean(values: torch.Tensor) -> torch.Tensor:
        return F.conv2d(values, window, groups=channels)

    mean_t, mean_g = local_mean(truth), local_mean(guess)
    var_t = local_mean(truth * truth) - mean_t**2
    var_g = local_mean(guess * guess) - mean_g**2
    covariance = local_mean(truth * guess) - mean_t * mean_g
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mean_t * mean_g + c1) * (2 * covariance + c2)) / (
        (mean_t**2 + mean_g**2 + c1) * (var_t + var_g + c2)
    )
    return index.flatten(1).mean(dim=1).numpy()


def reconstruction_quality(true_images: Images, reconstructed: Images) -> dict:
    """Score reconstructions against the true images, matched image to image.

    The attacker's images come in no particular order, so each true image is
    paired with one reconstruction by the assignment of largest total PSNR
    (Hungarian algorithm, scipy's linear_sum_assignment).

    Args:
        true_images, reconstructed: the same number of images, as in `psnr`.

    Returns:
        dict with `psnr` and `ssim` (arrays, one entry per true image, against
        its matched reconstruction), `assignment` (index of the reconstruction
        matched to each true image), `mean_psnr` and `mean_ssim`. Both SSIM
        entries are None for images under 11 pixels a side (see `ssim`).

    Raises:
        TypeError, ValueError: on invalid images, as in `psnr`.
    """
    truth, guess = _image_pair(true_images, reconstructed)
    n_images = len(truth)
    scores = np.stack([psnr(truth, guess[j].expand_as(truth)) for j in range(n_images)])
    scores = scores.T  # rows: true images, columns: reconstructions
    finite = np.where(np.isinf(scores), 1e6, scores)
    rows, columns = linear_sum_assignment(finite, maximize=True)
    assignment = columns[np.argsort(rows)]

    matched = guess[torch.as_tensor(assignment)]
    psnr_values = psnr(truth, matched)
    ssim_values = ssim(truth, matched) if min(truth.shape[2:]) >= SSIM_WINDOW else None
    return {
        "psnr": psnr_values,
        "ssim": ssim_values,
        "assignment": assignment,
        "mean_psnr": float(np.mean(psnr_values)),
        "mean_ssim": None if ssim_values is None else float(np.mean(ssim_values)),
    }


def plot_reconstructions(
    true_images: Images,
    reconstructed: Images,
    *,
    assignment: np.ndarray | None = None,
    psnr_values: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """Draw the true images above their matched reconstructions.

    Args:
        true_images, reconstructed: as in `psnr`.
        assignment: index of the reconstruction matched to each true image, as
            `reconstruction_quality` returns; None pairs them by index.
        psnr_values: PSNR per true image, written under its reconstruction.
        title: figure title.
    """
    truth, guess = _image_pair(true_images, reconstructed)
    if assignment is not None:
        guess = guess[torch.as_tensor(np.asarray(assignment))]
    n_images = len(truth)

    fig, axes = plt.subplots(
        2, n_images, figsize=(1.4 * n_images + 0.6, 3.2), squeeze=False
    )
    for column in range(n_images):
        for row, images in enumerate((truth, guess)):
            ax = axes[row, column]
            ax.imshow(images[column].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        if psnr_values is not None:
            axes[1, column].set_xlabel(f"{psnr_values[column]:.1f} dB")
    axes[0, 0].set_ylabel("true")
    axes[1, 0].set_ylabel("reconstructed")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# Membership inference.


class PixelMLP(nn.Module):
    """Classify images with one hidden layer on raw pixels: a model that memorises.

    Without convolutions' prior for images, this perceptron fits a few hundred
    training images almost exactly within a few dozen epochs while barely
    generalising, so it serves as the deliberately overfit target of the
    membership-inference demos. It has SkinLesionCNN's interface: float images
    (N, 3, side, side) in [0, 1] in, logits (N, n_classes) out.

    Args:
        n_classes: number of output logits.
        hidden: units of the hidden layer.
        side: image side in pixels.
        seed: when given, initialise the weights from this seed without touching
            torch's global random state.
    """

    def __init__(
        self,
        *,
        n_classes: int = 7,
        hidden: int = 128,
        side: int = 28,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        n_classes = _check_int(n_classes, "n_classes")
        hidden = _check_int(hidden, "hidden")
        side = _check_int(side, "side")
        if seed is not None:
            seed = _check_int(seed, "seed", minimum=0)
        self.n_classes = n_classes
        self.side = side
        scope = torch.random.fork_rng() if seed is not None else nullcontext()
        with scope:
            if seed is not None:
                torch.manual_seed(seed)
            self.hidden = nn.Linear(3 * side * side, hidden)
            self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, 3, side, side) in [0, 1] to logits (N, n_classes)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, self.side, self.side):
            raise ValueError(
                f"PixelMLP expects images of shape (N, 3, {self.side}, {self.side}), "
                f"got {tuple(x.shape)}."
            )
        # Centring the pixels on 0 speeds up SGD on this unnormalised input.
        return self.head(F.relu(self.hidden((x - 0.5).flatten(1))))


@dataclass(frozen=True, repr=False)
class MembershipResult:
    """The ROC curve, AUC and low-FPR true-positive rate of a membership attack.

    Attributes:
        auc: area under the ROC curve: 0.5 is guessing, 1 a perfect attack.
        fpr, tpr, thresholds: the ROC curve (sklearn's roc_curve).
        tpr_at_low_fpr: the largest true-positive rate at a false-positive rate
            of at most `low_fpr`: how many members an attacker finds while rarely
            accusing a non-member.
        low_fpr: that false-positive rate, 0.01 by default.
        n_members, n_nonmembers: the numbers of examples scored.
    """

    auc: float
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    tpr_at_low_fpr: float
    low_fpr: float
    n_members: int
    n_nonmembers: int

    def __repr__(self) -> str:
        return (
            f"MembershipResult(auc={self.auc:.4f}, tpr_at_low_fpr="
            f"{self.tpr_at_low_fpr:.4f}, low_fpr={self.low_fpr:g}, "
            f"n_members={self.n_members}, n_nonmembers={self.n_nonmembers})"
        )


@dataclass(frozen=True)
class MembershipSplit:
    """Image indices for a membership-inference experiment.

    Attributes:
        target: images the target model may train on (the member lesions).
        members: scored members, drawn from `target`.
        nonmembers: scored non-members, as many as `members`; the target must
            never train on them.
        reference: the attacker's own data, for reference models.
    """

    target: np.ndarray
    members: np.ndarray
    nonmembers: np.ndarray
    reference: np.ndarray


def membership_split(
    lesion_ids: np.ndarray,
    *,
    candidates: np.ndarray | None = None,
    strata: np.ndarray | None = None,
    shares: tuple[float, float, float] = (0.5, 0.25, 0.25),
    seed: int = 0,
) -> MembershipSplit:
    """Divide lesions into target, non-member and reference parts, then pair images.

    A membership attack must tell members from non-members by membership alone,
    so both must come from one population. Scoring a model's training images
    against a held-out split would also measure any difference between the
    splits: on the synthetic data, models trained on training-split images fit
    other training-split lesions better than held-out ones. Here the candidate
    lesions are shuffled within each stratum (an acquisition site, say) and cut
    by image count into `shares` for the target's training data, the non-members
    and the attacker's reference data. Members and non-members are then drawn in
    equal numbers within each stratum. A lesion goes whole to one part, so no
    reference model or target trains on another image of a scored lesion.

    Args:
        lesion_ids: (N,) lesion id per image, none of them NaN or None.
        candidates: integer indices in 0..N-1 of the images to divide, each at
            most once, for example the training split; None for all. A boolean
            mask is rejected: pass np.flatnonzero(mask).
        strata: (N,) stratum per image, such as the sites, or None for one.
        shares: image shares of the target, non-member and reference parts.
        seed: seed of the random choices.

    Returns:
        MembershipSplit. members[i] and nonmembers[i] come from the same
        stratum, in random order, so every prefix of the two stays matched.

    Raises:
        ValueError: on mismatched lengths, NaN or None lesion ids or strata,
            candidates that are empty, a boolean mask, not integers, out of
            range or repeated, shares that are not three positive numbers
            summing to 1, or no stratum with both target and non-member images.
    """
    lesion_ids = np.asarray(lesion_ids)
    strata = np.zeros(lesion_ids.shape) if strata is None else np.asarray(strata)
    if lesion_ids.ndim != 1 or strata.shape != lesion_ids.shape:
        raise ValueError(
            f"lesion_ids and strata must be 1-D of one length, got shapes "
            f"{lesion_ids.shape} and {strata.shape}."
        )
    _check_no_missing(lesion_ids, "lesion_ids")
    _check_no_missing(strata, "strata")
    candidates = _candidate_indices(candidates, len(lesion_ids))
    shares = np.asarray(shares, dtype=float)
    if shares.shape != (3,) or np.any(shares <= 0) or abs(shares.sum() - 1) > 1e-9:
        raise ValueError(
            f"shares must be three positive numbers summing to 1 (target, "
            f"non-members, reference), got {shares.tolist()}."
        )
    seed = _check_int(seed, "seed", minimum=0)

    rng = np.random.default_rng(seed)
    part_of_lesion = _assign_lesion_parts(
        lesion_ids[candidates], strata[candidates], shares, rng
    )
    part = np.array([part_of_lesion[lesion] for lesion in lesion_ids[candidates]])

    members, nonmembers = [], []
    for stratum in np.unique(strata[candidates]):
        in_stratum = strata[candidates] == stratum
        target_images = candidates[in_stratum & (part == 0)]
        other_images = candidates[in_stratum & (part == 1)]
        n_pairs = min(len(target_images), len(other_images))
        members.append(rng.choice(target_images, n_pairs, replace=False))
        nonmembers.append(rng.choice(other_images, n_pairs, replace=False))
    members, nonmembers = np.concatenate(members), np.concatenate(nonmembers)
    if len(members) == 0:
        raise ValueError(
            "No stratum has both target and non-member lesions, so there are no "
            "members and non-members to compare. Pass more candidates."
        )

    order = rng.permutation(len(members))
    return MembershipSplit(
        target=np.sort(candidates[part == 0]),
        members=members[order],
        nonmembers=nonmembers[order],
        reference=np.sort(candidates[part == 2]),
    )


def example_losses(
    model: nn.Module, images: Images, labels: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Compute the cross-entropy of every example under the model, in eval mode.

    Args:
        model: the trained model, left unchanged.
        images: float tensor (N, 3, side, side) in [0, 1] or uint8 (N, side, side, 3).
        labels: (N,) class indices.

    Returns:
        float64 array (N,).
    """
    logits, labels = _logits_and_labels(model, images, labels)
    return F.cross_entropy(logits.double(), labels, reduction="none").numpy()


def loss_threshold_scores(
    model: nn.Module, images: Images, labels: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Score membership by the negative loss (Yeom et al. 2018).

    A model fits its training examples better than unseen ones, so a low loss
    suggests a member. Yeom et al. call an example a member when its loss is below
    the mean training loss; the ROC curve of `membership_roc` sweeps every
    threshold at once.

    Returns:
        float64 array (N,), higher meaning more likely a member.
    """
    return -example_losses(model, images, labels)


def logit_confidence(
    model: nn.Module, images: Images, labels: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Compute log(p / (1 - p)) of the true class's probability p per example.

    The logit-scaled confidence of Carlini et al. 2022, whose distribution over
    training runs is close to Gaussian. It is computed as the true class's logit
    minus the log-sum-exp of the others, which stays finite when p rounds to 1.

    Returns:
        float64 array (N,).
    """
    logits, labels = _logits_and_labels(model, images, labels)
    logits = logits.double()
    true_logit = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -math.inf)
    return (true_logit - torch.logsumexp(others, dim=1)).numpy()


def calibrated_scores(
    model: nn.Module,
    reference_models: Sequence[nn.Module],
    images: Images,
    labels: np.ndarray | torch.Tensor,
    *,
    per_example_variance: bool = False,
) -> np.ndarray:
    """Score membership relative to reference models: offline LiRA.

    Some examples are easy (every model fits them) and some hard, so a raw loss
    mixes difficulty with membership. The reference models were trained like the
    target on data from the same population without these examples. For each
    example, their logit-scaled confidences (`logit_confidence`) estimate its
    distribution when it is not a member, a Gaussian of mean mu and standard
    deviation sigma. The score is (phi - mu) / sigma for the target model's
    confidence phi: how far above its non-member behaviour the example sits
    (Carlini et al. 2022, "LiRA offline"). With few reference models the
    per-example sigma is noisy, so by default one sigma, pooled over all examples,
    is used, as Carlini et al. recommend for small numbers of reference models.
    With one reference model no sigma can be estimated, and the score is phi - mu.

    Args:
        model: the target model.
        reference_models: models trained without `images`; at least one, and at
            least two with `per_example_variance`.
        images, labels: the examples to score.
        per_example_variance: estimate sigma per example instead of pooled.

    Returns:
        float64 array (N,), higher meaning more likely a member.

    Raises:
        ValueError: on too few reference models.
    """
    reference_models = list(reference_models)
    needed = 2 if per_example_variance else 1
    if len(reference_models) < needed:
        raise ValueError(
            f"calibrated_scores needs at least {needed} reference model(s) "
            f"{'with per_example_variance' if per_example_variance else ''}, got "
            f"{len(reference_models)}. Train them with train_reference_models."
        )

    target = logit_confidence(model, images, labels)
    reference = np.stack(
        [logit_confidence(m, images, labels) for m in reference_models]
    )
    mean = reference.mean(axis=0)
    if per_example_variance:
        spread = reference.std(axis=0, ddof=1)
    elif len(reference_models) > 1:
        spread = np.full_like(mean, np.sqrt(np.mean(reference.var(axis=0, ddof=1))))
    else:
        # One model gives no spread. A constant sigma changes no ranking, so the
        # score is the plain difference.
        spread = np.ones_like(mean)
    return (target - mean) / np.maximum(spread, 1e-6)


def train_reference_models(
    build_model: Callable[[], nn.Module],
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    n_models: int,
    fraction: float = 0.5,
    epochs: int,
    lr: float | Callable[[int], float],
    batch_size: int = 32,
    seed: int = 0,
    step_options: dict[str, Any] | None = None,
) -> list[nn.Module]:
    """Train reference models for `calibrated_scores` on an attacker's data.

    Each model trains with `helpers.federated.train_pooled` on its own random
    `fraction` of the examples, drawn from `seed`. `build_model` runs with torch's
    global random state seeded per model inside a forked scope, so a model that
    initialises from the global state starts from other weights each time, and
    the caller's state is untouched. None of these examples may be ones the
    attack will score, because calibration needs models that never saw them.

    Args:
        build_model: returns a fresh model of the target's architecture.
        images, labels: the attacker's population data.
        n_models: number of reference models.
        fraction: share of the examples each model trains on, in (0, 1].
        epochs, lr, batch_size, step_options: as the target was trained, passed
            to `train_pooled` (lr may be a schedule such as `cosine_lr`).
        seed: seed of the subsets and of training.

    Returns:
        The trained models.

    Raises:
        ValueError: on n_models, epochs or batch_size that are not ints >= 1, a
            fraction outside (0, 1], a number of labels other than the number
            of images, or too few examples.
    """
    n_models = _check_int(n_models, "n_models")
    fraction = _check_real(fraction, "fraction")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}.")
    epochs = _check_int(epochs, "epochs")
    batch_size = _check_int(batch_size, "batch_size")
    seed = _check_int(seed, "seed", minimum=0)
    labels = np.asarray(labels)
    n_examples = len(images)
    if labels.ndim != 1 or len(labels) != n_examples:
        raise ValueError(
            f"labels must have one entry per image, got {len(labels)} labels "
            f"(shape {labels.shape}) for {n_examples} images."
        )
    subset_size = int(round(fraction * n_examples))
    if subset_size < 1:
        raise ValueError(
            f"fraction {fraction} of {n_examples} examples leaves none to train on."
        )

    rng = np.random.default_rng(seed)
    models = []
    for index in range(n_models):
        chosen = np.sort(rng.choice(n_examples, subset_size, replace=False))
        model_seed = _restart_seed(seed, index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_seed)
            model = build_model()
        train_pooled(
            model,
            images[chosen],
            labels[chosen],
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=model_seed,
            step_options=step_options,
        )
        models.append(model)
    return models


def membership_roc(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    low_fpr: float = LOW_FPR,
) -> MembershipResult:
    """Measure a membership attack: ROC curve, AUC and TPR at a low FPR.

    Members are the positives. Equal numbers of members and non-members are
    required, as in the membership-inference literature, so that an attack's
    accuracy at any threshold is 0.5 for guessing and a lopsided set cannot
    flatter it.

    Args:
        member_scores: scores of training members, higher meaning member.
        nonmember_scores: scores of held-out examples.
        low_fpr: false-positive rate for `tpr_at_low_fpr`, in (0, 1).

    Returns:
        MembershipResult.

    Raises:
        ValueError: on empty, non-1-D, non-finite or unequal-size score arrays,
            or low_fpr outside (0, 1).
    """
    members = _check_scores(member_scores, "member_scores")
    nonmembers = _check_scores(nonmember_scores, "nonmember_scores")
    if len(members) != len(nonmembers):
        raise ValueError(
            f"membership_roc needs as many members as non-members, got "
            f"{len(members)} and {len(nonmembers)}. Sample the larger set down to "
            "the size of the smaller one."
        )
    if not 0 < low_fpr < 1:
        raise ValueError(f"low_fpr must lie in (0, 1), got {low_fpr!r}.")

    truth = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    scores = np.concatenate([members, nonmembers])
    fpr, tpr, thresholds = roc_curve(truth, scores)
    return MembershipResult(
        auc=float(roc_auc_score(truth, scores)),
        fpr=fpr,
        tpr=tpr,
        thresholds=thresholds,
        tpr_at_low_fpr=float(tpr[fpr <= low_fpr].max()),
        low_fpr=low_fpr,
        n_members=len(members),
        n_nonmembers=len(nonmembers),
    )


def dp_roc_bound(
    epsilon: float, delta: float, fpr: float | np.ndarray
) -> float | np.ndarray:
    """Bound the TPR of any membership attack on an (epsilon, delta)-DP model.

    Differential privacy confines every attack's ROC curve to
    TPR <= min(e^epsilon * FPR + delta, 1 - e^-epsilon * (1 - delta - FPR)), the
    hypothesis-testing view of DP (Kairouz, Oh and Viswanath 2015, "The
    Composition Theorem for Differential Privacy", arXiv:1311.0776, whose privacy
    region bounds the false-alarm and missed-detection rates of any test of
    membership). The bound is capped at 1,
    since no rate exceeds 1.

    e^epsilon * FPR is computed as exp(min(epsilon + log FPR, 0)): where the
    product exceeds 1 the first term cannot be the minimum, so a large epsilon
    gives 1 there instead of overflowing.

    Args:
        epsilon: privacy loss, a finite number >= 0 (Python or NumPy, not bool).
        delta: failure probability, in [0, 1).
        fpr: false-positive rate(s) in [0, 1].

    Returns:
        The bound, a float for a float fpr and an array for an array.

    Raises:
        ValueError: on epsilon < 0 or infinite, delta outside [0, 1), a bool,
            fpr outside [0, 1], not numbers, or any NaN.
    """
    if not (_is_real(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}.")
    if not math.isfinite(epsilon):
        raise ValueError(
            f"epsilon must be finite, got {epsilon!r}: an infinite epsilon bounds "
            "nothing, so draw no DP region."
        )
    if not (_is_real(delta) and 0 <= delta < 1):
        raise ValueError(f"delta must be a number in [0, 1), got {delta!r}.")
    rates = _check_rates(fpr)
    epsilon, delta = float(epsilon), float(delta)

    with np.errstate(divide="ignore"):
        log_rates = np.log(rates)  # -inf where FPR is 0
    first = np.exp(np.minimum(epsilon + log_rates, 0.0)) + delta
    second = 1 - math.exp(-epsilon) * (1 - delta - rates)
    bound = np.minimum(np.minimum(first, second), 1.0)
    return float(bound) if bound.ndim == 0 else bound


def plot_roc(
    results: dict[str, MembershipResult],
    *,
    dp_bounds: dict[str, tuple[float, float]] | None = None,
    log_scale: bool = True,
    title: str = "",
) -> Figure:
    """Draw membership attacks' ROC curves, with optional DP regions.

    Args:
        results: name -> MembershipResult.
        dp_bounds: name -> (epsilon, delta), each drawn as the dashed curve of
            `dp_roc_bound`.
        log_scale: log-log axes, which show the low-FPR region that matters.
        title: figure title.
    """
    if not results:
        raise ValueError("results is empty; pass at least one MembershipResult.")

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    low = 1e-3 if log_scale else 0.0
    grid = np.logspace(-3, 0, 200) if log_scale else np.linspace(0, 1, 200)
    ax.plot(grid, grid, color="grey", linewidth=0.8, label="guessing")
    for name, result in results.items():
        ax.plot(result.fpr, result.tpr, label=f"{name} (AUC {result.auc:.2f})")
    for name, (epsilon, delta) in (dp_bounds or {}).items():
        ax.plot(grid, dp_roc_bound(epsilon, delta, grid), linestyle="--", label=name)
    if log_scale:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(low, 1)
    ax.set_ylim(low, 1.02)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# Internals of gradient inversion.


def _invert_once(
    model: nn.Module,
    observed: torch.Tensor,
    known_labels: torch.Tensor | None,
    *,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    n_classes: int,
    settings: dict[str, Any],
    iterations: int,
    step_size: float,
    tv_weight: float,
    generator: torch.Generator,
    bar: tqdm,
) -> dict[str, Any]:
    images = torch.rand(shape, generator=generator, dtype=dtype)
    images.requires_grad_(True)
    variables = [images]
    label_logits = None
    if known_labels is None:
        label_logits = torch.randn(
            shape[0], n_classes, generator=generator, dtype=dtype
        )
        label_logits.requires_grad_(True)
        variables.append(label_logits)

    optimizer = torch.optim.Adam(variables, lr=step_size)
    milestones = sorted({max(1, int(iterations * point)) for point in DECAY_POINTS})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=milestones, gamma=DECAY_FACTOR
    )
    names = [name for name, _ in model.named_parameters()]
    history = []
    for _ in range(iterations):
        targets = known_labels if label_logits is None else label_logits.softmax(dim=1)
        simulated = _replay_local_training(model, images, targets, **settings)
        distance = 1 - F.cosine_similarity(_flatten(simulated, names), observed, dim=0)
        objective = distance + tv_weight * total_variation(images)

        optimizer.zero_grad()
        objective.backward()
        for variable in variables:
            variable.grad.sign_()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            images.clamp_(0, 1)

        history.append(float(distance.detach()))
        bar.update(1)

    # The loss of the final images, after the last step and clamp.
    final_images = images.detach()
    targets = known_labels
    if label_logits is not None:
        targets = label_logits.detach().softmax(dim=1)
    simulated = _replay_local_training(model, final_images, targets, **settings)
    history[-1] = float(
        1 - F.cosine_similarity(_flatten(simulated, names), observed, dim=0)
    )
    return {
        "images": images.detach().clone(),
        "soft_labels": None
        if label_logits is None
        else label_logits.detach().softmax(dim=1),
        "loss_history": history,
    }


def _replay_local_training(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    epoch_orders: Sequence[torch.Tensor],
    class_weights: torch.Tensor | None,
    lr: float,
    batch_size: int,
    momentum: float,
    weight_decay: float,
) -> dict[str, torch.Tensor]:
    # The steps of simulate_local_update on checked input. Gradient inversion
    # calls this once per iteration, so it checks nothing itself.
    differentiable = images.requires_grad or (
        torch.is_floating_point(targets) and targets.requires_grad
    )

    start = {
        name: parameter.detach().requires_grad_(True)
        for name, parameter in model.named_parameters()
    }
    params = dict(start)
    velocity: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.train()
    try:
        for order in epoch_orders:
            for first in range(0, len(order), batch_size):
                batch = order[first : first + batch_size]
                logits = functional_call(model, params, (images[batch],))
                loss = _cross_entropy(logits, targets[batch], class_weights)
                grads = torch.autograd.grad(
                    loss, list(params.values()), create_graph=differentiable
                )
                params = _sgd_step(
                    params, grads, velocity, lr, momentum, weight_decay, differentiable
                )
    finally:
        model.train(was_training)

    delta = {name: params[name] - start[name].detach() for name in start}
    if not differentiable:
        delta = {name: value.detach() for name, value in delta.items()}
    return delta


def _sgd_step(
    params: dict[str, torch.Tensor],
    grads: Sequence[torch.Tensor],
    velocity: dict[str, torch.Tensor],
    lr: float,
    momentum: float,
    weight_decay: float,
    differentiable: bool,
) -> dict[str, torch.Tensor]:
    # torch.optim.SGD without dampening or Nesterov: d = g + wd * w, the velocity
    # starts at d and then becomes momentum * v + d, and w <- w - lr * v.
    new_params = {}
    for (name, weight), grad in zip(params.items(), grads, strict=True):
        direction = grad + weight_decay * weight if weight_decay else grad
        if momentum:
            if name in velocity:
                direction = momentum * velocity[name] + direction
            velocity[name] = direction
        new_weight = weight - lr * direction
        if not differentiable:
            new_weight = new_weight.detach().requires_grad_(True)
            if momentum:
                velocity[name] = velocity[name].detach()
        new_params[name] = new_weight
    return new_params


def _cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None
) -> torch.Tensor:
    if not torch.is_floating_point(targets):
        return F.cross_entropy(logits, targets, weight=class_weights)
    # Soft labels: each example counts with its class weights averaged by its
    # label probabilities, which equals F.cross_entropy's weighted mean for
    # one-hot labels.
    log_probs = F.log_softmax(logits, dim=1)
    weights = (
        torch.ones(logits.shape[1], dtype=logits.dtype)
        if class_weights is None
        else class_weights
    )
    weighted = targets * weights
    return -(weighted * log_probs).sum() / weighted.sum()


def _attack_labels(
    model: nn.Module,
    update: Update,
    labels: torch.Tensor | np.ndarray | None,
    n_images: int,
    n_classes: int,
) -> tuple[torch.Tensor | None, str]:
    if labels is not None:
        known = _class_indices(labels, n_images)
        _check_label_range(known, n_classes)
        return known, "given"
    if n_images == 1:
        return torch.tensor([infer_label(model, update)]), "inferred"
    return None, "optimised"


def _check_update(model: nn.Module, update: Update) -> int:
    if not isinstance(update, Update):
        raise TypeError(
            f"update must be a helpers.hospital.Update, got {type(update).__name__}."
        )
    n_images = update.n_samples
    if not _is_int(n_images):
        raise ValueError(f"update.n_samples must be an int, got {n_images!r}.")
    if n_images < 1:
        raise ValueError(
            f"update.n_samples must be at least 1, got {n_images}: there is no "
            "image to reconstruct."
        )

    missing = []
    for name, parameter in model.named_parameters():
        value = update.delta.get(name)
        if value is None or tuple(value.shape) != tuple(parameter.shape):
            missing.append(name)
    if missing:
        raise ValueError(
            f"The update does not match the model: parameters {missing} are "
            "missing or have other shapes. Pass the global model the hospital "
            "trained from."
        )
    deltas = [update.delta[name] for name, _ in model.named_parameters()]
    if not all(torch.all(torch.isfinite(value)) for value in deltas):
        raise ValueError(
            "The update contains NaN or infinite values, so it cannot be matched. "
            "Check the hospital's training for divergence."
        )
    if all(torch.all(value == 0) for value in deltas):
        raise ValueError(
            "The update is all zeros, so it has no direction to match. Check that "
            "the hospital trained (lr > 0)."
        )
    return int(n_images)


def _training_settings(
    *,
    lr: float,
    local_epochs: int,
    batch_size: int,
    momentum: float,
    weight_decay: float,
) -> dict[str, Any]:
    """Check a hospital's SGD settings and return them as Python numbers."""
    lr = _check_real(lr, "lr")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr!r}.")
    momentum = _check_real(momentum, "momentum")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}.")
    weight_decay = _check_real(weight_decay, "weight_decay")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    return {
        "lr": lr,
        "local_epochs": _check_int(local_epochs, "local_epochs"),
        "batch_size": _check_int(batch_size, "batch_size"),
        "momentum": momentum,
        "weight_decay": weight_decay,
    }


def _check_training_images(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not torch.is_floating_point(images):
        raise TypeError(
            "images must be a float tensor (N, 3, side, side); convert uint8 arrays "
            "with helpers.datasets.images_to_tensor."
        )
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ValueError(
            f"images must have shape (N, 3, side, side) with N >= 1, got "
            f"{tuple(images.shape)}."
        )
    _check_unit_range(images, "images")
    # A differentiable conversion, so gradients still reach the caller's images.
    return images.to(dtype)


def _check_targets(
    labels: torch.Tensor | np.ndarray,
    n_images: int,
    n_classes: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    # Hard labels become int64 class indices, and soft labels keep their graph.
    targets = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    if not torch.is_floating_point(targets):
        indices = _class_indices(targets, n_images)
        _check_label_range(indices, n_classes)
        return indices

    if targets.ndim == 1:
        raise TypeError(
            f"labels must be integer class indices (N,) or soft labels "
            f"({n_images}, {n_classes}), got float labels of shape "
            f"{tuple(targets.shape)}."
        )
    if tuple(targets.shape) != (n_images, n_classes):
        raise ValueError(
            f"soft labels must have shape ({n_images}, {n_classes}), one row of "
            f"class probabilities per image, got {tuple(targets.shape)}."
        )
    values = targets.detach().double()
    row_sums = values.sum(dim=1)
    if (
        not torch.all(torch.isfinite(values))
        or torch.any(values < 0)
        or not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-4)
    ):
        raise ValueError(
            "soft labels must be class probabilities: finite, >= 0 and summing "
            f"to 1 in every row, got row sums {row_sums.tolist()}. Apply softmax "
            "to logits first."
        )
    return targets.to(dtype)


def _class_indices(labels: torch.Tensor | np.ndarray, n_images: int) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        indices = labels.detach()
    else:
        indices = torch.as_tensor(np.asarray(labels))
    if indices.ndim != 1 or len(indices) != n_images:
        raise ValueError(
            f"labels must have shape ({n_images},), one per image, got "
            f"{tuple(indices.shape)}."
        )
    if (
        torch.is_floating_point(indices)
        or torch.is_complex(indices)
        or indices.dtype == torch.bool
    ):
        raise TypeError(f"labels must be integer class indices, got {indices.dtype}.")
    return indices.long()


def _check_label_range(labels: torch.Tensor, n_classes: int) -> None:
    # Cross-entropy would raise an IndexError above the range and skip the
    # label -100 (its ignore_index) silently.
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must lie in 0..{n_classes - 1}, got "
            f"{int(labels.min())}..{int(labels.max())}."
        )


def _check_class_weights(
    class_weights: torch.Tensor | np.ndarray | Sequence[float] | None,
    n_classes: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    if class_weights is None:
        return None
    try:
        if isinstance(class_weights, torch.Tensor):
            weights = class_weights.detach().double()
        else:
            weights = torch.as_tensor(np.asarray(class_weights, dtype=float))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"class_weights must be {n_classes} numbers, one per class, got "
            f"{class_weights!r}."
        ) from error
    if weights.shape != (n_classes,):
        raise ValueError(
            f"class_weights must have one entry per class ({n_classes}), got "
            f"shape {tuple(weights.shape)}."
        )
    if not torch.all(torch.isfinite(weights)) or torch.any(weights < 0):
        raise ValueError(
            f"class_weights must be finite and >= 0, got {weights.tolist()}."
        )
    if not torch.any(weights > 0):
        raise ValueError(
            "class_weights are all 0, so every weighted loss divides by zero. Give "
            "the classes positive weights."
        )
    return weights.to(dtype)


def _check_example_weights(
    targets: torch.Tensor, class_weights: torch.Tensor | None
) -> None:
    # The weighted mean cross-entropy divides by the batch's total weight, so an
    # image of weight 0 alone in a batch would make the update NaN.
    if class_weights is None:
        return
    if not torch.is_floating_point(targets):
        present = torch.unique(targets)
        zero = present[class_weights[present] == 0].tolist()
        if zero:
            raise ValueError(
                f"class_weights are 0 for class indices {zero} that occur in "
                "labels, so a batch of only those classes would divide by zero. "
                "Give every class in labels a positive weight."
            )
        return
    image_weights = targets.detach().to(class_weights.dtype) @ class_weights
    zero = torch.nonzero(image_weights <= 0).flatten().tolist()
    if zero:
        raise ValueError(
            f"class_weights give the soft labels of images {zero} a weight of 0, "
            "so a batch of only those images would divide by zero. Give every "
            "class these labels put probability on a positive weight."
        )


def _epoch_orders(
    orders: Sequence[torch.Tensor] | None, n_images: int, local_epochs: int
) -> list[torch.Tensor]:
    if orders is None:
        return [torch.arange(n_images)] * local_epochs
    orders = [torch.as_tensor(order).long() for order in orders]
    if len(orders) != local_epochs:
        raise ValueError(
            f"orders must hold one permutation per local epoch ({local_epochs}), "
            f"got {len(orders)}."
        )
    expected = torch.arange(n_images)
    for order in orders:
        if order.shape != (n_images,) or not torch.equal(order.sort().values, expected):
            raise ValueError(
                f"every order must be a permutation of range({n_images}), got "
                f"{order.tolist()}."
            )
    return orders


def _image_side(model: nn.Module, side: int | None) -> int:
    side = getattr(model, "side", None) if side is None else side
    if not _is_int(side) or side < 1:
        raise ValueError(
            f"The image side is unknown or invalid ({side!r}): pass side= for a "
            "model without a `side` attribute."
        )
    return int(side)


def _parameter_dtype(model: nn.Module) -> torch.dtype:
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError(
            "The model has no parameters, so local training changes nothing. Pass "
            "the global model the hospital trained."
        )
    return parameter.dtype


def _n_logits(model: nn.Module, sample: torch.Tensor) -> int:
    # Eval mode, so that the probe leaves BatchNorm statistics unchanged.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(sample).shape[1])
    finally:
        model.train(was_training)


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(
            "The model has no nn.Linear layer whose update reveals the label. Pass "
            "labels= to invert_update, or labels=None with n_samples > 1 to "
            "optimise soft labels."
        )
    return linear[-1]


def _flatten(values: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([values[name].reshape(-1) for name in names])


def _restart_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * sigma**2))
    profile = profile / profile.sum()
    return (profile[:, None] * profile[None, :])[None, None]


def _as_float_images(images: Images, name: str) -> torch.Tensor:
    # float64 stays float64; every other float dtype becomes float32.
    if isinstance(images, np.ndarray):
        return images_to_tensor(images)
    if not isinstance(images, torch.Tensor) or not torch.is_floating_point(images):
        raise TypeError(
            f"{name} must be a float tensor (N, 3, H, W) in [0, 1] or a uint8 array "
            f"(N, H, W, 3), got {type(images).__name__}."
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (N, 3, H, W), got {tuple(images.shape)}."
        )
    _check_unit_range(images, name)
    images = images.detach()
    return images if images.dtype == torch.float64 else images.float()


def _check_unit_range(images: torch.Tensor, name: str) -> None:
    values = images.detach()
    if not torch.all(torch.isfinite(values)):
        raise ValueError(
            f"{name} must be floats in [0, 1], got NaN or infinite values."
        )
    if values.numel() and (values.min() < 0 or values.max() > 1):
        raise ValueError(
            f"{name} must be floats in [0, 1], got values from "
            f"{float(values.min()):.4g} to {float(values.max()):.4g}. Convert "
            "uint8 images with helpers.datasets.images_to_tensor, or divide "
            "0..255 floats by 255."
        )


def _image_pair(
    true_images: Images, reconstructed: Images
) -> tuple[torch.Tensor, torch.Tensor]:
    truth = _as_float_images(true_images, "true_images")
    guess = _as_float_images(reconstructed, "reconstructed")
    if torch.float64 in (truth.dtype, guess.dtype):
        truth, guess = truth.double(), guess.double()
    if len(truth) == 0:
        raise ValueError("true_images is empty; pass at least one image.")
    if truth.shape != guess.shape:
        raise ValueError(
            f"true_images and reconstructed must have the same shape, got "
            f"{tuple(truth.shape)} and {tuple(guess.shape)}."
        )
    return truth, guess


# Internals of membership inference.


def _logits_and_labels(
    model: nn.Module, images: Images, labels: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    x = _as_float_images(images, "images").to(dtype)
    y = _class_indices(labels, len(x))
    if len(y) == 0:
        raise ValueError("images is empty; pass at least one example to score.")

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])
    finally:
        model.train(was_training)
    _check_label_range(y, logits.shape[1])
    return logits, y


def _assign_lesion_parts(
    lesion_ids: np.ndarray,
    strata: np.ndarray,
    shares: np.ndarray,
    rng: np.random.Generator,
) -> dict[Any, int]:
    # Part 0, 1 or 2 per lesion. A lesion seen in two strata keeps the part its
    # first stratum gave it.
    bounds = np.cumsum(shares)
    part_of_lesion: dict[Any, int] = {}
    for stratum in np.unique(strata):
        lesions, counts = np.unique(lesion_ids[strata == stratum], return_counts=True)
        order = rng.permutation(len(lesions))
        lesions, counts = lesions[order], counts[order]
        # Each lesion's position is the share of images before its middle.
        positions = (np.cumsum(counts) - counts / 2) / counts.sum()
        for lesion, position in zip(lesions, positions, strict=True):
            if lesion not in part_of_lesion:
                part_of_lesion[lesion] = int(np.searchsorted(bounds, position))
    return part_of_lesion


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}.")
    if values.size == 0:
        raise ValueError(f"{name} is empty; score at least one example.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return values


def _check_no_missing(values: np.ndarray, name: str) -> None:
    missing = np.flatnonzero(pd.isna(values))
    if missing.size:
        raise ValueError(
            f"{name} contains NaN or None at image indices "
            f"{missing[:10].tolist()}. Give every image a value, so that the "
            "images of one lesion or stratum can be grouped."
        )


def _candidate_indices(candidates: np.ndarray | None, n_images: int) -> np.ndarray:
    if candidates is None:
        return np.arange(n_images)

    indices = np.asarray(candidates)
    if indices.ndim != 1:
        raise ValueError(
            f"candidates must be a 1-D array of image indices, got shape "
            f"{indices.shape}."
        )
    if indices.size == 0:
        raise ValueError("candidates is empty; pass the images to divide.")
    if indices.dtype == bool:
        raise ValueError(
            "candidates is a boolean mask, but it must contain image indices. Pass "
            "np.flatnonzero(mask)."
        )
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"candidates must be integer image indices, got dtype {indices.dtype}."
        )

    outside = indices[(indices < 0) | (indices >= n_images)]
    if outside.size:
        raise ValueError(
            f"candidates must be image indices in 0..{n_images - 1} (lesion_ids "
            f"has {n_images} images), got {outside[:10].tolist()}. Negative "
            "indices do not count from the end here."
        )

    values, counts = np.unique(indices, return_counts=True)
    repeated = values[counts > 1]
    if repeated.size:
        raise ValueError(
            f"candidates contains image indices more than once: "
            f"{repeated[:10].tolist()}. Pass each image once, for example "
            "np.unique(candidates)."
        )
    return indices.astype(np.intp)


def _check_rates(fpr: float | np.ndarray) -> np.ndarray:
    rates = np.asarray(fpr)
    is_number = np.issubdtype(rates.dtype, np.integer) or np.issubdtype(
        rates.dtype, np.floating
    )
    if rates.dtype == bool or not is_number:
        raise ValueError(
            f"fpr must be a number or an array of numbers in [0, 1], got {fpr!r}."
        )
    rates = rates.astype(float)
    if np.any(np.isnan(rates)) or np.any(rates < 0) or np.any(rates > 1):
        raise ValueError(f"fpr must lie in [0, 1], got {fpr!r}.")
    return rates


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    is_number = isinstance(value, int | float | np.integer | np.floating)
    return is_number and not isinstance(value, bool)


def _check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Return a Python or NumPy int (not a bool) >= minimum as an int, else raise."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_real(value: Any, name: str) -> float:
    """Return a finite Python or NumPy number (not a bool) as a float, else raise."""
    if not _is_real(value):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return float(value)
