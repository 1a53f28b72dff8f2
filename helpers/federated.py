"""Federated averaging over virtual hospitals, and the baselines it is compared to.

In one round the server sends the global model to a sample of hospitals. Each
trains a copy on its own data and returns an update (trained minus global
weights). The server drops invalid updates and aggregates the rest into the next
global model, and every hospital reports its validation confusion matrix.

The loop takes the local-training step (`local_step`, run inside each hospital)
and the aggregation step (`aggregate`, run by the server) as arguments, so
differential privacy and secure aggregation plug in without changing it. An
aggregation step is any callable `(global_state, updates) -> new_state`, such as
`fedavg` or a `ServerMomentum` instance.

Runs are deterministic from `seed` on one machine and torch version. torch's CPU
kernels can still differ in the last bits across CPUs and thread counts, and
such differences grow over many rounds.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.std import tqdm

from helpers.classes import CLASSES
from helpers.datasets import images_to_tensor
from helpers.hospital import (
    Hospital,
    LeaveFederation,
    LocalStep,
    Update,
    sgd_local_step,
)
from helpers.metrics import classification_metrics, metrics_from_confusion
from helpers.models import predict_proba

logger = logging.getLogger(__name__)

State = dict[str, torch.Tensor]
Aggregate = Callable[[State, list[Update]], State]
# The ways run_federated can sample hospitals each round.
SAMPLING_MODES = ("fixed", "poisson")
# A fixed learning rate, or one per round (per epoch for the baselines), from 1.
LearningRate = float | Callable[[int], float]


def cosine_lr(initial: float, total: int) -> Callable[[int], float]:
    """Return a learning rate that decays from `initial` along a half cosine.

    Step t of `total` (from 1) gets initial * (1 + cos(pi * (t - 1) / total)) / 2,
    the schedule of Loshchilov and Hutter 2017 ("SGDR") without restarts. The
    small steps at the end settle the model, so the final round's scores vary
    less from run to run than with a constant rate.

    Raises:
        ValueError: if `initial` is not positive or `total` is not an int >= 1.
    """
    if not (
        isinstance(initial, int | float) and math.isfinite(initial) and initial > 0
    ):
        raise ValueError(f"initial must be a positive number, got {initial!r}.")
    if not isinstance(total, int) or total < 1:
        raise ValueError(f"total must be an int >= 1, got {total!r}.")

    def lr_at(step: int) -> float:
        if not 1 <= step <= total:
            raise ValueError(
                f"step {step} is outside the schedule's 1..{total}; build the "
                "schedule with the run's number of rounds or epochs."
            )
        return initial * 0.5 * (1 + math.cos(math.pi * (step - 1) / total))

    return lr_at


def fedavg(
    global_state: State, updates: Sequence[Update], *, server_lr: float = 1.0
) -> State:
    """Apply the sample-weighted mean of the updates to the global weights.

    new = global + server_lr * sum_k(n_k * delta_k) / sum_k(n_k), which with
    server_lr 1 is FedAvg (McMahan et al. 2017, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data"): the average of the
    hospitals' trained models weighted by their training-sample counts.

    Args:
        global_state: the global model's state_dict, not changed.
        updates: updates with the same keys and shapes as `global_state`. Run
            `validate_updates` first to drop invalid ones.
        server_lr: step size on the averaged update. Values above 1 extrapolate.

    Returns:
        New state_dict with the dtypes of `global_state`.

    Raises:
        ValueError: if there are no updates, all n_samples are zero, keys or
            shapes differ, or server_lr is not positive.
    """
    if not server_lr > 0:
        raise ValueError(f"server_lr must be positive, got {server_lr!r}.")

    mean_delta = _weighted_mean_delta(global_state, updates)
    return _apply_step(global_state, mean_delta, server_lr)


class ServerMomentum:
    """Aggregate with server momentum, FedAvgM.

    Each call computes the sample-weighted mean update d, then
    v <- momentum * v + d and new = global + server_lr * v (Hsu, Qi and Brown
    2019, "Measuring the Effect of Non-Identical Data Distribution for Federated
    Visual Classification"). The velocity v starts at zero and persists across
    calls, so use one instance per training run or call `reset`.

    Args:
        momentum: the server momentum beta in [0, 1), where 0 gives FedAvg.
        server_lr: step size on the velocity.

    Raises:
        ValueError: on momentum outside [0, 1) or a non-positive server_lr.
    """

    def __init__(self, *, momentum: float = 0.9, server_lr: float = 1.0) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}.")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be positive, got {server_lr!r}.")
        self.momentum = momentum
        self.server_lr = server_lr
        self.velocity: State | None = None

    def __call__(self, global_state: State, updates: Sequence[Update]) -> State:
        """Update the velocity with this round's mean update and apply it."""
        mean_delta = _weighted_mean_delta(global_state, updates)

        if self.velocity is None:
            self.velocity = {key: torch.zeros_like(d) for key, d in mean_delta.items()}
        if self.velocity.keys() != mean_delta.keys():
            raise ValueError(
                "The model's state_dict keys changed since the previous round. "
                "Call reset() before aggregating a different model."
            )
        self.velocity = {
            key: self.momentum * self.velocity[key] + mean_delta[key]
            for key in mean_delta
        }
        return _apply_step(global_state, self.velocity, self.server_lr)

    def reset(self) -> None:
        """Forget the velocity, as before the first round."""
        self.velocity = None

    def __repr__(self) -> str:
        return f"ServerMomentum(momentum={self.momentum}, server_lr={self.server_lr})"


def validate_updates(
    global_state: State, updates: Sequence[Update], *, round: int
) -> list[Update]:
    """Return the updates that are safe to average, logging any excluded.

    An update is excluded for this round when its keys differ from the global
    state_dict's, a tensor has the wrong shape, a value is NaN or infinite, or
    n_samples is not a non-negative int. One warning per round names every
    excluded hospital, the reason and the round.

    Args:
        global_state: the global model's state_dict.
        updates: the updates of this round.
        round: round number, for the log and error messages.

    Returns:
        The valid updates, in their original order.

    Raises:
        ValueError: if no update is valid, or the valid ones all have
            n_samples 0, because averaging them would give NaN weights.
    """
    valid = []
    problems = []
    for update in updates:
        problem = _find_problem(global_state, update)
        if problem is None:
            valid.append(update)
        else:
            problems.append(f"hospital {_hospital_of(update)!r}: {problem}")

    if problems:
        logger.warning(
            "Round %d: excluded %d of %d updates: %s",
            round,
            len(problems),
            len(updates),
            "; ".join(problems),
        )
    if not valid:
        detail = "; ".join(problems) if problems else "no hospital sent an update"
        raise ValueError(
            f"Round {round}: no valid update to average ({detail}). Check the "
            "local-training step, for example lower the learning rate if the "
            "weights diverged."
        )
    if sum(update.n_samples for update in valid) == 0:
        raise ValueError(
            f"Round {round}: every valid update has n_samples 0, so the weighted "
            "average is undefined. Hospitals must report the number of training "
            "examples behind their update."
        )
    return valid


@dataclass
class History:
    """Per-round records of a federated run.

    Each record has `round` (from 1), `hospitals`, `excluded` and `left`
    (tuples of names: the hospitals that sent an update, those whose update was
    invalid, and those that left the federation that round), `train_loss` (the
    sample-weighted mean over the valid updates, None without one), and
    the federated validation metrics computed from the sum of all hospitals'
    validation confusion matrices: `val_balanced_accuracy`, `val_accuracy`,
    `val_melanoma_sensitivity`, `val_per_class_recall` (class code -> recall or
    None), `val_confusion_matrix` and `val_n`. The metrics are None when no
    hospital has validation images.
    """

    records: list[dict[str, Any]] = field(default_factory=list)

    def append(self, record: dict[str, Any]) -> None:
        """Add the record of one round."""
        self.records.append(record)

    def to_frame(self) -> pd.DataFrame:
        """Tabulate the records, one row per round and one column per scalar.

        Hospital names are joined by ", ", the per-class recalls become
        `val_recall_<code>` columns, and the confusion matrices are left out.
        """
        rows = []
        for record in self.records:
            row = {
                "round": record["round"],
                "hospitals": ", ".join(record["hospitals"]),
                "excluded": ", ".join(record["excluded"]),
                "left": ", ".join(record.get("left", ())),
                "train_loss": record["train_loss"],
                "val_balanced_accuracy": record["val_balanced_accuracy"],
                "val_accuracy": record["val_accuracy"],
                "val_melanoma_sensitivity": record["val_melanoma_sensitivity"],
            }
            for code, recall in record["val_per_class_recall"].items():
                row[f"val_recall_{code}"] = recall
            row["val_n"] = record["val_n"]
            rows.append(row)
        return pd.DataFrame(rows)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]


def run_federated(
    model: nn.Module,
    hospitals: Sequence[Hospital],
    *,
    rounds: int,
    local_epochs: int = 1,
    lr: LearningRate,
    batch_size: int = 32,
    fraction: float = 1.0,
    seed: int = 0,
    local_step: LocalStep = sgd_local_step,
    aggregate: Aggregate = fedavg,
    step_options: dict[str, Any] | None = None,
    max_update_norm: float | None = None,
    max_weight: int | None = None,
    progress: bool = True,
    local_steps: Mapping[str, LocalStep] | None = None,
    sampling: str = "fixed",
) -> History:
    """Train `model` in place by federated rounds over the hospitals.

    With `sampling="fixed"` each round samples max(1, round(fraction * H))
    of the H hospitals still in the federation, without replacement, with halves
    rounded up. With `sampling="poisson"` each of them joins each round on its
    own with probability `fraction`, so a round may have no hospital at all
    (the sampling that hospital-level DP accounting assumes). Each sampled
    hospital trains the global model for `local_epochs` with its local step.
    The server excludes invalid updates (`validate_updates`), sets the model to
    `aggregate(global_state, updates)`, and records the federated validation
    metrics of every hospital, sampled or not. The loop logs one line per round
    at INFO level and shows a tqdm progress bar over rounds on stderr, unless
    `progress` is False or the CI environment variable is set.

    A hospital whose step raises `LeaveFederation` sends nothing that round and
    is not sampled again. The loop logs a warning naming it and records it in
    the round's `left` field, and the others go on. A round in which every
    sampled hospital left keeps the previous weights. A Poisson round with no
    hospital calls `aggregate(global_state, [])`, which a DP aggregator handles
    with noise alone and `fedavg` rejects. When no hospital remains, the run
    stops early with a warning and returns the rounds so far.

    With fraction 1, R rounds of E local epochs pass over every training example
    R * E times: give `train_pooled` epochs=R * E for the same budget.

    Args:
        model: the global model, trained in place.
        hospitals: the federation, with unique names.
        rounds: number of rounds.
        local_epochs: passes over its training data per hospital per round.
        lr: local learning rate, or a callable giving it per round (from 1),
            such as `cosine_lr(0.01, rounds)`.
        batch_size: local minibatch size.
        fraction: share of hospitals sampled per round, in (0, 1].
        seed: seed of the sampling and of every hospital's local training.
        local_step: hospitals' local-training step (see `sgd_local_step`).
        aggregate: server step `(global_state, updates) -> new_state`.
        step_options: extra keyword arguments for `local_step`, for example
            {"proximal_mu": 0.01} for FedProx or {"class_weights": "balanced"}.
        max_update_norm: if given, every hospital clips its update to this L2
            norm before sending it (`Hospital.train`).
        max_weight: if given, every hospital caps its update's weight at this
            many samples.
        progress: show the progress bar.
        local_steps: optional hospital name -> local step, for steps that keep
            state per hospital across rounds (such as one privacy accountant per
            hospital). A hospital in it uses its own step instead of
            `local_step`; the names must belong to `hospitals`.
        sampling: "fixed" or "poisson", as described above.

    Returns:
        History with one record per round.

    Raises:
        ValueError: on invalid settings, if a round has no valid update, or if
            `aggregate` returns non-finite weights or other keys (the model then
            keeps the previous round's weights).
    """
    hospitals = list(hospitals)
    _check_federation(
        hospitals, rounds=rounds, local_epochs=local_epochs, fraction=fraction
    )
    steps = _check_local_steps(hospitals, local_steps, local_step)
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}.")
    sampler = np.random.default_rng(seed)
    step_options = dict(step_options or {})
    active = list(range(len(hospitals)))

    history = History()
    bar = tqdm(
        range(1, rounds + 1),
        desc="rounds",
        disable=not progress or bool(os.environ.get("CI")),
    )
    for round_number in bar:
        if not active:
            logger.warning(
                "Round %d/%d: no hospital is left in the federation, so the run "
                "stops after %d rounds.",
                round_number,
                rounds,
                round_number - 1,
            )
            break
        chosen = _sample_hospitals(sampler, active, fraction, sampling)
        global_state = _copy_state(model)
        round_lr = _lr_at(lr, round_number)

        updates, left = [], []
        for index in chosen:
            hospital = hospitals[index]
            try:
                update = hospital.train(
                    model,
                    local_epochs=local_epochs,
                    lr=round_lr,
                    batch_size=batch_size,
                    seed=_derive_seed(seed, round_number, int(index)),
                    local_step=steps[hospital.name],
                    max_update_norm=max_update_norm,
                    max_weight=max_weight,
                    **step_options,
                )
            except LeaveFederation as departure:
                logger.warning(
                    "Round %d: hospital %r left the federation and sent no update: %s",
                    round_number,
                    hospital.name,
                    departure,
                )
                left.append(hospital.name)
                active.remove(index)
            else:
                updates.append(update)

        valid = []
        if updates:
            valid = validate_updates(global_state, updates, round=round_number)
        # A round in which every sampled hospital left keeps the weights, but an
        # empty Poisson round still reaches the aggregator (noise alone).
        if updates or len(chosen) == 0:
            new_state = aggregate(global_state, valid)
            _check_new_state(global_state, new_state, round_number)
            model.load_state_dict(new_state)

        record = _round_record(model, hospitals, updates, valid, round_number)
        record["left"] = tuple(left)
        history.append(record)
        logger.info(
            "Round %d/%d: %d hospitals, %d excluded, train loss %s, "
            "validation balanced accuracy %s, %d left the federation",
            round_number,
            rounds,
            len(updates),
            len(record["excluded"]),
            _format_metric(record["train_loss"], digits=4),
            _format_metric(record["val_balanced_accuracy"]),
            len(left),
        )
        bar.set_postfix(val_bal_acc=_format_metric(record["val_balanced_accuracy"]))
    return history


def train_pooled(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    epochs: int,
    lr: LearningRate,
    batch_size: int = 32,
    seed: int = 0,
    local_step: LocalStep = sgd_local_step,
    step_options: dict[str, Any] | None = None,
) -> list[float]:
    """Train `model` in place on pooled data: the centralised baseline.

    Each epoch is one call of `local_step` with local_epochs=1 on all of the
    data, so the pooled model trains exactly like one hospital that has every
    image and takes part in every round. As in a round, each call builds a fresh
    optimizer, so SGD momentum restarts every epoch. `epochs` passes over each example
    match `run_federated` with rounds * local_epochs = epochs.

    Args:
        model: the model, trained in place.
        x: uint8 images (N, side, side, 3) or a float tensor (N, 3, side, side).
        y: (N,) integer labels.
        epochs: passes over the data.
        lr: learning rate, or a callable giving it per epoch (from 1).
        batch_size, local_step, step_options: as in `run_federated`.
        seed: seed of the shuffling and of torch's global random state, which
            is forked so the caller's state is untouched.

    Returns:
        Mean training loss of each epoch.

    Raises:
        ValueError: on mismatched lengths or epochs < 1.
    """
    dataset = _as_dataset(x, y)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}.")
    step_options = dict(step_options or {})

    generator = torch.Generator().manual_seed(seed)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            loss = local_step(
                model,
                dataset,
                local_epochs=1,
                lr=_lr_at(lr, epoch),
                batch_size=batch_size,
                generator=generator,
                **step_options,
            )
            losses.append(float(loss))
    return losses


def train_local_only(
    model: nn.Module,
    hospital: Hospital,
    *,
    epochs: int,
    lr: LearningRate,
    batch_size: int = 32,
    seed: int = 0,
    local_step: LocalStep = sgd_local_step,
    step_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Train a copy of `model` on one hospital's data alone: the local baseline.

    The hospital trains through its public `train`, one local epoch per call as
    in a federated round, and the copy takes each update. `epochs` passes over
    each example match `run_federated` with rounds * local_epochs = epochs.

    Args:
        model: the starting model, not changed.
        hospital: the hospital that trains.
        epochs: passes over the hospital's training data.
        lr: learning rate, or a callable giving it per epoch (from 1).
        batch_size, seed, local_step, step_options: as in `run_federated`.

    Returns:
        The trained copy.

    Raises:
        ValueError: on epochs < 1.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}.")
    step_options = dict(step_options or {})

    local_model = copy.deepcopy(model)
    for epoch in range(1, epochs + 1):
        update = hospital.train(
            local_model,
            local_epochs=1,
            lr=_lr_at(lr, epoch),
            batch_size=batch_size,
            seed=_derive_seed(seed, epoch, 0),
            local_step=local_step,
            **step_options,
        )
        state = local_model.state_dict()
        _check_finite_delta(update, epoch)
        local_model.load_state_dict(
            {key: state[key] + update.delta[key] for key in state}
        )
    return local_model


def evaluate(
    model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
) -> dict:
    """Compute `classification_metrics` of `model` on images x and labels y.

    Args:
        model: the model, left unchanged.
        x: uint8 images (N, side, side, 3) or a float tensor (N, 3, side, side).
        y: (N,) integer labels.
    """
    dataset = _as_dataset(x, y)
    images, labels = dataset.tensors
    probabilities = predict_proba(model, images)
    return classification_metrics(
        labels.numpy(), probabilities, n_classes=probabilities.shape[1]
    )


def _weighted_mean_delta(global_state: State, updates: Sequence[Update]) -> State:
    updates = list(updates)
    if not updates:
        raise ValueError(
            "No updates to aggregate. Pass at least one update (see validate_updates)."
        )
    for update in updates:
        problem = _find_problem(global_state, update)
        if problem is not None:
            raise ValueError(
                f"Cannot aggregate the update of hospital "
                f"{_hospital_of(update)!r}: {problem}. Filter the updates with "
                "validate_updates first."
            )
    total = sum(update.n_samples for update in updates)
    if total == 0:
        raise ValueError(
            "Every update has n_samples 0, so the weighted average is undefined."
        )

    mean = {}
    for key in global_state:
        weighted = sum(
            update.n_samples * update.delta[key].to(torch.float64) for update in updates
        )
        mean[key] = weighted / total
    return mean


def _apply_step(global_state: State, step: State, scale: float) -> State:
    new_state = {}
    for key, value in global_state.items():
        moved = value.to(torch.float64) + scale * step[key].to(torch.float64)
        if not torch.is_floating_point(value):
            moved = moved.round()
        new_state[key] = moved.to(value.dtype)
    return new_state


def _find_problem(global_state: State, update: Any) -> str | None:
    if not isinstance(update, Update):
        return f"expected an Update, got {type(update).__name__}"
    n_samples = update.n_samples
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
        return f"n_samples must be an int, got {n_samples!r}"
    if n_samples < 0:
        return f"n_samples must be >= 0, got {n_samples}"
    if not isinstance(update.delta, dict):
        return f"delta must be a dict of tensors, got {type(update.delta).__name__}"

    missing = sorted(global_state.keys() - update.delta.keys())
    extra = sorted(update.delta.keys() - global_state.keys())
    if missing or extra:
        return f"wrong keys (missing {missing}, unexpected {extra})"
    for key, expected in global_state.items():
        value = update.delta[key]
        if not isinstance(value, torch.Tensor):
            return f"{key} is a {type(value).__name__}, expected a tensor"
        if value.shape != expected.shape:
            return (
                f"{key} has shape {tuple(value.shape)}, expected "
                f"{tuple(expected.shape)}"
            )
        if torch.is_floating_point(value) and not torch.all(torch.isfinite(value)):
            return f"{key} holds NaN or infinite values"
    return None


def _hospital_of(update: Any) -> str:
    return str(getattr(update, "hospital", "unknown"))


def _check_new_state(global_state: State, new_state: State, round_number: int) -> None:
    if not isinstance(new_state, dict) or new_state.keys() != global_state.keys():
        raise ValueError(
            f"Round {round_number}: aggregate must return a state_dict with the "
            "global model's keys. The model keeps the previous round's weights."
        )
    for key, value in new_state.items():
        if torch.is_floating_point(value) and not torch.all(torch.isfinite(value)):
            raise ValueError(
                f"Round {round_number}: aggregate returned NaN or infinite values "
                f"in {key}. The model keeps the previous round's weights."
            )


def _check_finite_delta(update: Update, epoch: int) -> None:
    for key, value in update.delta.items():
        if torch.is_floating_point(value) and not torch.all(torch.isfinite(value)):
            raise ValueError(
                f"Local-only training of hospital {update.hospital!r} diverged in "
                f"epoch {epoch}: {key} holds NaN or infinite values. Lower lr."
            )


def _round_record(
    model: nn.Module,
    hospitals: list[Hospital],
    updates: list[Update],
    valid: list[Update],
    round_number: int,
) -> dict[str, Any]:
    valid_ids = {id(update) for update in valid}
    total = sum(update.n_samples for update in valid)
    train_loss = (
        sum(update.n_samples * update.train_loss for update in valid) / total
        if total > 0
        else None
    )

    confusion = sum(
        h.evaluate(model, split="val")["confusion_matrix"] for h in hospitals
    )
    if confusion.sum() > 0:
        metrics = metrics_from_confusion(confusion)
    else:
        metrics = {
            "balanced_accuracy": None,
            "accuracy": None,
            "per_class_recall": dict.fromkeys(CLASSES),
            "melanoma_sensitivity": None,
        }

    return {
        "round": round_number,
        "hospitals": tuple(update.hospital for update in updates),
        "excluded": tuple(u.hospital for u in updates if id(u) not in valid_ids),
        "train_loss": None if train_loss is None else float(train_loss),
        "val_balanced_accuracy": metrics["balanced_accuracy"],
        "val_accuracy": metrics["accuracy"],
        "val_melanoma_sensitivity": metrics["melanoma_sensitivity"],
        "val_per_class_recall": metrics["per_class_recall"],
        "val_confusion_matrix": confusion,
        "val_n": int(confusion.sum()),
    }


def _check_federation(
    hospitals: list[Hospital], *, rounds: int, local_epochs: int, fraction: float
) -> None:
    if not hospitals:
        raise ValueError("hospitals is empty, but a federation needs at least one.")
    names = [hospital.name for hospital in hospitals]
    if len(set(names)) != len(names):
        raise ValueError(f"Hospital names must be unique, got {names}.")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}.")
    if not isinstance(local_epochs, int) or local_epochs < 1:
        raise ValueError(f"local_epochs must be an int >= 1, got {local_epochs!r}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}.")


def _check_local_steps(
    hospitals: list[Hospital],
    local_steps: Mapping[str, LocalStep] | None,
    local_step: LocalStep,
) -> dict[str, LocalStep]:
    names = [hospital.name for hospital in hospitals]
    local_steps = dict(local_steps or {})
    unknown = sorted(set(local_steps) - set(names))
    if unknown:
        raise ValueError(
            f"local_steps names hospitals {unknown} that are not in the federation "
            f"{names}. Key the steps by hospital name."
        )
    return {name: local_steps.get(name, local_step) for name in names}


def _sample_hospitals(
    sampler: np.random.Generator, active: list[int], fraction: float, sampling: str
) -> np.ndarray:
    if sampling == "poisson":
        joins = sampler.random(len(active)) < fraction
        return np.asarray(active)[joins]
    n_sampled = min(len(active), max(1, int(fraction * len(active) + 0.5)))
    return np.sort(sampler.choice(active, n_sampled, replace=False))


def _lr_at(lr: LearningRate, step: int) -> float:
    value = lr(step) if callable(lr) else lr
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(
            f"the learning rate at round or epoch {step} is {value!r}; it must be a "
            "positive number."
        )
    return float(value)


def _derive_seed(seed: int, round_number: int, index: int) -> int:
    # Independent, repeatable seeds for every (round, hospital) pair.
    return int(np.random.SeedSequence([seed, round_number, index]).generate_state(1)[0])


def _copy_state(model: nn.Module) -> State:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _as_dataset(
    x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
) -> TensorDataset:
    images = x if isinstance(x, torch.Tensor) else images_to_tensor(np.asarray(x))
    labels = torch.as_tensor(np.asarray(y)).long()
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"y must be 1-D with one label per image, got shape "
            f"{tuple(labels.shape)} for {len(images)} images."
        )
    return TensorDataset(images, labels)


def _format_metric(value: float | None, *, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
