"""Virtual hospitals: private images inside, only updates and metrics outside.

A `Hospital` keeps its own train, validation and test images, as a real hospital
would. What it exposes is what a real hospital taking part in plain federated
averaging sends out: its name, its training-sample count and label histogram, the
update from training a model it was sent, and aggregate metrics of a model on its
own data. Reading its images or labels raises PermissionError.

NOTE: this is an in-process simulation and a teaching device, not a security
boundary. Python can always reach private attributes (`hospital._train`,
`vars(hospital)`), and the counts it publishes already reveal something, for
example that a hospital has exactly one case of a rare class.

A hospital knows nothing of rounds or servers. Its local-training step is an
argument (`local_step`) with the signature of `sgd_local_step`, so a
differentially private step can replace plain SGD without changing this module.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from helpers.classes import CLASSES
from helpers.datasets import images_to_tensor
from helpers.metrics import classification_metrics
from helpers.models import class_weights as inverse_frequency_weights
from helpers.models import predict_proba

if TYPE_CHECKING:
    from helpers.datasets import SkinLesionData
    from helpers.splits import Partition

# Parts of a hospital's data that `evaluate` accepts.
EVALUATION_SPLITS = ("train", "val", "test")

# Attribute names made of these words read as a request for raw data.
_DATA_WORDS = frozenset(
    {
        "array", "arrays", "data", "dataset", "datasets", "example", "examples",
        "feature", "features", "image", "images", "input", "inputs", "label",
        "labels", "loader", "pixels", "raw", "record", "records", "samples",
        "target", "targets", "tensor", "tensors", "test", "train", "val",
        "validation", "x", "y",
    }
)  # fmt: skip

LocalStep = Callable[..., float]


class LeaveFederation(Exception):
    """Raised by a local-training step to withdraw its hospital from the run.

    The step raises it before it takes any training step, for example when the
    round would spend more privacy budget than the hospital planned for. The
    hospital then sends no update, not even a partial one. `run_federated`
    catches it, logs the hospital's name with the message, records the name in
    the round's `left` field and no longer samples that hospital.
    """


@dataclass(frozen=True)
class Update:
    """The message a hospital sends back after local training.

    Attributes:
        hospital: name of the hospital that trained.
        delta: trained minus global weights, one tensor per state_dict key.
        n_samples: training examples behind the update (the FedAvg weight).
        train_loss: mean training loss over the local epochs.
    """

    hospital: str
    delta: dict[str, torch.Tensor]
    n_samples: int
    train_loss: float


def clip_update(
    delta: dict[str, torch.Tensor], *, max_norm: float
) -> tuple[dict[str, torch.Tensor], float]:
    """Scale an update so its L2 norm over all tensors is at most `max_norm`.

    This is the clipping step of hospital-level DP (McMahan et al. 2018,
    "Learning Differentially Private Recurrent Language Models") and of secure
    aggregation with a declared bound: it runs inside the hospital, before
    anything is sent, so the server never sees an unclipped update. The norm is
    taken over the concatenation of every tensor, in float64.

    Args:
        delta: trained minus global weights, one tensor per state_dict key.
        max_norm: the bound, > 0.

    Returns:
        The clipped delta (a new dict; the input is unchanged) and the norm the
        delta had before clipping.

    Raises:
        ValueError: if `max_norm` is not a positive finite number, or the delta
            is empty or holds non-finite values.
    """
    _check_max_norm(max_norm, "max_norm")
    if not delta:
        raise ValueError(
            "The update is empty: it has no tensors to clip. Pass the delta of "
            "a trained model, one tensor per state_dict key."
        )
    integer_keys = [
        key for key, value in delta.items() if not torch.is_floating_point(value)
    ]
    if integer_keys:
        raise ValueError(
            f"The update's tensors {integer_keys} are not floating point, and "
            "scaling would turn counts into fractions. Clipping bounds "
            "floating-point weights only: use a model without integer buffers "
            "(GroupNorm instead of BatchNorm, whose num_batches_tracked is one)."
        )

    squared = sum(
        float(torch.sum(value.detach().double() ** 2)) for value in delta.values()
    )
    norm = math.sqrt(squared)
    if not math.isfinite(norm):
        raise ValueError(
            "The update contains non-finite values, so its norm is undefined and it "
            "cannot be clipped. Lower the learning rate or check the data."
        )

    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    clipped = {key: value.detach() * scale for key, value in delta.items()}
    return clipped, norm


def _check_max_norm(value: Any, name: str) -> float:
    """Return `value` as a float if it is a positive finite number, else raise."""
    is_number = isinstance(value, int | float | np.integer | np.floating)
    if isinstance(value, bool) or not is_number or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    return float(value)


def sgd_local_step(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    local_epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    class_weights: torch.Tensor | str | None = None,
    proximal_mu: float = 0.0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> float:
    """Train `model` in place with minibatch SGD on cross-entropy.

    Each local epoch is one pass over `dataset` in an order shuffled by
    `generator`, and the last batch of an epoch may be smaller. A fresh SGD optimizer
    is built on every call, so momentum does not carry over between rounds.

    With `proximal_mu > 0` the loss gains FedProx's proximal term
    mu / 2 * ||w - w_start||^2 (Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks"), where w_start are the weights the call started
    from (the global model). It keeps local training near the global model when
    hospitals' data differ.

    Args:
        model: the model to train, changed in place.
        dataset: TensorDataset of float images (N, 3, side, side) and int64
            labels (N,).
        local_epochs: passes over the dataset.
        lr: SGD learning rate.
        batch_size: examples per SGD step.
        generator: torch.Generator that orders the examples.
        class_weights: per-class cross-entropy weights: a tensor of length
            n_classes, "balanced" for inverse-frequency weights of this
            dataset's labels (`helpers.models.class_weights`), or None.
        proximal_mu: FedProx coefficient mu, where 0 gives plain SGD.
        momentum: SGD momentum.
        weight_decay: L2 penalty added by the optimizer.

    Returns:
        Mean (class-weighted) cross-entropy per example over all local
        epochs, without the proximal term.

    Raises:
        ValueError: on an empty dataset or an invalid setting, or on class
            weights that give zero weight to a class present in the dataset
            (a batch of only that class would divide by zero).
    """
    images, labels = _dataset_tensors(dataset)
    _check_step_settings(
        local_epochs=local_epochs,
        lr=lr,
        batch_size=batch_size,
        proximal_mu=proximal_mu,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    weights = _loss_weights(model, labels, class_weights)

    start_weights = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    model.train()

    total_loss = torch.zeros((), dtype=torch.float64)
    n_seen = 0
    for _ in range(local_epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(images[batch]), labels[batch], weight=weights)
            objective = loss
            if proximal_mu > 0:
                objective = loss + proximal_mu / 2 * _squared_distance(
                    model.parameters(), start_weights
                )

            optimizer.zero_grad()
            objective.backward()
            optimizer.step()

            total_loss += loss.detach().double() * len(batch)
            n_seen += len(batch)

    return float(total_loss / n_seen)


class Hospital:
    """A hospital that trains and evaluates models on data it never sends.

    Public surface: `name`, `n_samples`, `label_histogram`, `train` and
    `evaluate`. Any attribute that names raw data (`images`, `labels`, `data`,
    `x`, `train_images`, ...) raises PermissionError.

    NOTE: the privacy here is a convention of the simulation, not a security
    boundary, because Python can always reach the private attributes.

    Args:
        name: hospital name, shown in logs and tables.
        train, val, test: each a pair (images, labels): uint8 images
            (N, side, side, 3) and integer labels (N,) indexing CLASSES. The
            validation and test parts may be empty, but the training part may not.

    Raises:
        ValueError: if the training part is empty, or on mismatched lengths,
            shapes, image sides or labels outside 0..len(CLASSES) - 1.
        TypeError: if the images are not a uint8 array.
    """

    def __init__(
        self,
        name: str,
        *,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
    ) -> None:
        name = str(name)
        parts = {"train": train, "val": val, "test": test}
        checked = {part: _check_part(name, part, pair) for part, pair in parts.items()}

        if len(checked["train"][1]) == 0:
            raise ValueError(
                f"Hospital {name!r} has no training images, so it cannot train "
                "and would carry zero weight in federated averaging. Give it "
                "training images or leave it out of the federation."
            )
        sides = {images.shape[1] for images, _ in checked.values() if len(images)}
        if len(sides) > 1:
            raise ValueError(
                f"Hospital {name!r} has images of different sides {sorted(sides)} "
                "in its train, val and test parts. Resize them to one side."
            )

        self._name = name
        self._parts = {
            part: TensorDataset(images_to_tensor(images), torch.as_tensor(labels))
            for part, (images, labels) in checked.items()
        }
        self._label_histogram = np.bincount(checked["train"][1], minlength=len(CLASSES))
        self._label_histogram.setflags(write=False)
        self._clipping_log: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        """Hospital name."""
        return self._name

    @property
    def n_samples(self) -> int:
        """Number of training images."""
        return len(self._parts["train"])

    @property
    def label_histogram(self) -> np.ndarray:
        """Read-only training-image count per class, in CLASSES order."""
        return self._label_histogram

    def train(
        self,
        model: nn.Module,
        *,
        local_epochs: int,
        lr: float,
        batch_size: int = 32,
        seed: int = 0,
        local_step: LocalStep = sgd_local_step,
        max_update_norm: float | None = None,
        max_weight: int | None = None,
        **step_options: Any,
    ) -> Update:
        """Train a copy of `model` on the training part and return the update.

        `model` itself is not changed. The copy is trained by
        `local_step(copy, dataset, local_epochs=, lr=, batch_size=, generator=,
        **step_options)`, which must train in place and return the mean loss.
        torch's global random state is seeded from `seed` inside a forked scope,
        so a step that draws from it (dropout, DP noise) is repeatable and the
        caller's random state is untouched.

        Args:
            model: the global model.
            local_epochs: passes over the training part.
            lr: learning rate.
            batch_size: examples per step.
            seed: seed of the shuffling generator and of the global random state.
            local_step: the local-training step, `sgd_local_step` by default.
            max_update_norm: if given, the update is clipped to this L2 norm
                here, before it leaves the hospital (`clip_update`).
            max_weight: if given, the update's weight (`n_samples`) is capped
                at this many samples, so no hospital outweighs a declared bound.
            **step_options: passed on to `local_step`, for example
                `proximal_mu` or `class_weights`.

        Returns:
            Update whose delta is trained minus global weights for every
            state_dict key. With a bound, the hospital also appends the norm
            before clipping and whether it clipped to its own `clipping_log`,
            which it keeps and never sends.

        Raises:
            LeaveFederation: passed on from `local_step` when the hospital
                withdraws; no update is returned.
        """
        if max_update_norm is not None:
            _check_max_norm(max_update_norm, "max_update_norm")
        if max_weight is not None and (
            isinstance(max_weight, bool)
            or not isinstance(max_weight, int | np.integer)
            or max_weight < 1
        ):
            raise ValueError(
                f"max_weight must be a positive whole number of samples, got "
                f"{max_weight!r}."
            )

        global_state = {
            key: value.detach().clone() for key, value in model.state_dict().items()
        }
        local_model = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(seed)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train_loss = local_step(
                local_model,
                self._parts["train"],
                local_epochs=local_epochs,
                lr=lr,
                batch_size=batch_size,
                generator=generator,
                **step_options,
            )

        trained_state = local_model.state_dict()
        delta = {
            key: trained_state[key].detach() - global_state[key] for key in global_state
        }
        n_samples = self.n_samples
        if max_update_norm is not None:
            delta, norm = clip_update(delta, max_norm=max_update_norm)
            self._clipping_log.append(
                {
                    "norm": norm,
                    "max_update_norm": float(max_update_norm),
                    "clipped": norm > max_update_norm,
                }
            )
        if max_weight is not None:
            n_samples = min(n_samples, int(max_weight))
        return Update(
            hospital=self._name,
            delta=delta,
            n_samples=n_samples,
            train_loss=float(train_loss),
        )

    @property
    def clipping_log(self) -> list[dict[str, Any]]:
        """This hospital's own record of clipped updates, oldest first (a copy).

        One entry per update trained with `max_update_norm`: the norm before
        clipping, the bound, and whether the update was scaled down. The hospital
        keeps this record, and nothing in it is sent with the update.
        """
        return [dict(entry) for entry in self._clipping_log]

    def evaluate(self, model: nn.Module, *, split: str = "val") -> dict:
        """Evaluate `model` on one part of this hospital's data.

        Only aggregate metrics leave the hospital. On an empty part the result
        has `n` 0, an all-zero confusion matrix and None for every metric, so a
        server can still add up the hospitals' confusion matrices.

        Args:
            model: the model to evaluate, left unchanged.
            split: "val", "test" or "train".

        Returns:
            `helpers.metrics.classification_metrics` of the predictions.

        Raises:
            ValueError: on an unknown split.
        """
        if split not in EVALUATION_SPLITS:
            raise ValueError(
                f"split must be one of {EVALUATION_SPLITS}, got {split!r}."
            )

        images, labels = self._parts[split].tensors
        if len(labels) == 0:
            return _empty_metrics()
        probabilities = predict_proba(model, images)
        return classification_metrics(
            labels.numpy(), probabilities, n_classes=len(CLASSES)
        )

    def __getattr__(self, attribute: str) -> Any:
        # Called only when normal lookup fails, so the public surface and the
        # private attributes never reach this method.
        if not attribute.startswith("_") and _names_raw_data(attribute):
            name = self.__dict__.get("_name", "?")
            raise PermissionError(
                f"Hospital {name!r} does not expose {attribute!r}. A real "
                "hospital never sends its images or labels: only updates (from "
                "train) and aggregate metrics (from evaluate) leave it, besides "
                "its name, n_samples and label_histogram. (This in-process "
                "simulation is a teaching device, not a security boundary.)"
            )
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {attribute!r}"
        )

    def __dir__(self) -> list[str]:
        return [
            "clipping_log",
            "evaluate",
            "label_histogram",
            "n_samples",
            "name",
            "train",
        ]

    def __repr__(self) -> str:
        return f"Hospital(name={self._name!r}, n_samples={self.n_samples})"


def make_hospitals(
    data: SkinLesionData, partition: Partition, split: np.ndarray
) -> list[Hospital]:
    """Build one hospital per partition entry from a data set and a global split.

    Hospital h gets the images assigned to h, divided into train, val and test
    by `split`. The pooled test set is therefore the union of the hospitals' test
    parts.

    Args:
        data: the images and labels (a `helpers.datasets.SkinLesionData`).
        partition: hospital names and the hospital index of every image.
        split: (N,) "train", "val" or "test" per image, as returned by
            `helpers.splits.split_by_lesion`.

    Returns:
        Hospitals in partition order.

    Raises:
        ValueError: on mismatched lengths, unknown split values, or a hospital
            left without training images.
    """
    split = np.asarray(split)
    n_images = len(data.labels)
    if split.shape != (n_images,) or len(partition.assignment) != n_images:
        raise ValueError(
            "data, partition and split must describe the same images, got "
            f"{n_images} images, {len(partition.assignment)} partition entries "
            f"and split of shape {split.shape}."
        )
    unknown = sorted(set(split.tolist()) - set(EVALUATION_SPLITS))
    if unknown:
        raise ValueError(
            f"split contains invalid values {unknown}. Expected only "
            f"{EVALUATION_SPLITS}, as returned by split_by_lesion."
        )

    hospitals = []
    for index, name in enumerate(partition.names):
        in_hospital = partition.assignment == index
        parts = {}
        for part in EVALUATION_SPLITS:
            chosen = np.flatnonzero(in_hospital & (split == part))
            parts[part] = (data.images[chosen], data.labels[chosen])
        hospitals.append(Hospital(name, **parts))
    return hospitals


def _check_part(
    name: str, part: str, pair: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise TypeError(
            f"Hospital {name!r}: {part} must be a pair (images, labels), got "
            f"{type(pair).__name__}."
        )
    images, labels = np.asarray(pair[0]), np.asarray(pair[1])

    if images.dtype != np.uint8:
        raise TypeError(
            f"Hospital {name!r}: {part} images must be uint8, got {images.dtype}."
        )
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(
            f"Hospital {name!r}: {part} images must have shape (N, side, side, 3), "
            f"got {images.shape}."
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"Hospital {name!r}: {part} labels must be 1-D with one label per "
            f"image, got shape {labels.shape} for {len(images)} images."
        )
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"Hospital {name!r}: {part} labels must be integers, got {labels.dtype}."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(
            f"Hospital {name!r}: {part} labels must lie in 0..{len(CLASSES) - 1}, "
            f"got {labels.min()}..{labels.max()}."
        )
    return images, labels.astype(np.int64)


def _check_step_settings(
    *,
    local_epochs: int,
    lr: float,
    batch_size: int,
    proximal_mu: float,
    momentum: float,
    weight_decay: float,
) -> None:
    if not isinstance(local_epochs, int) or local_epochs < 1:
        raise ValueError(f"local_epochs must be an int >= 1, got {local_epochs!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}.")
    if not proximal_mu >= 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu!r}.")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}.")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")


def _dataset_tensors(dataset: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2:
        raise TypeError(
            "dataset must be a TensorDataset of (images, labels), got "
            f"{type(dataset).__name__}."
        )
    images, labels = dataset.tensors
    if len(labels) == 0:
        raise ValueError("dataset is empty, but local training needs an image.")
    return images, labels.long()


def _loss_weights(
    model: nn.Module, labels: torch.Tensor, class_weights: torch.Tensor | str | None
) -> torch.Tensor | None:
    if class_weights is None:
        return None

    n_classes = getattr(model, "n_classes", len(CLASSES))
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                "class_weights must be a tensor, 'balanced' or None, got "
                f"{class_weights!r}."
            )
        counts = torch.bincount(labels, minlength=n_classes)
        return inverse_frequency_weights(counts.numpy())

    weights = torch.as_tensor(class_weights, dtype=torch.float32)
    if weights.shape != (n_classes,):
        raise ValueError(
            f"class_weights must have one entry per class ({n_classes}), got "
            f"shape {tuple(weights.shape)}."
        )
    if not torch.all(torch.isfinite(weights)) or torch.any(weights < 0):
        raise ValueError(f"class_weights must be finite and >= 0, got {weights}.")
    present = torch.unique(labels)
    if torch.any(weights[present] == 0):
        zero = [int(k) for k in present if weights[k] == 0]
        raise ValueError(
            f"class_weights are 0 for class indices {zero} that occur in the data, "
            "so a batch of only those classes would divide by zero. Give every "
            "present class a positive weight."
        )
    return weights


def _squared_distance(parameters: Any, reference: list[torch.Tensor]) -> torch.Tensor:
    return sum(
        ((p - p0) ** 2).sum() for p, p0 in zip(parameters, reference, strict=True)
    )


def _names_raw_data(attribute: str) -> bool:
    words = attribute.lower().split("_")
    return any(word in _DATA_WORDS for word in words)


def _empty_metrics() -> dict:
    return {
        "balanced_accuracy": None,
        "accuracy": None,
        "per_class_recall": dict.fromkeys(CLASSES),
        "melanoma_sensitivity": None,
        "melanoma_auc": None,
        "confusion_matrix": np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64),
        "n": 0,
    }
