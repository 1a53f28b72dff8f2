"""Differential privacy for the federation: Opacus inside a hospital, and DP-FedAvg.

Two protected units, two mechanisms:

- Sample-level DP (one image). Each hospital trains with Opacus's DP-SGD
  (Abadi et al. 2016, "Deep Learning with Differential Privacy"): Poisson
  sampling of its images, per-sample gradient clipping to `max_grad_norm`, and
  Gaussian noise of standard deviation `noise_multiplier * max_grad_norm` on the
  sum. `DPSGDStep` is one hospital's local-training step. It keeps one Opacus
  `PrivacyEngine`, and so one accountant, for the whole federated run, so the
  epsilon it reports composes over every round the hospital took part in.
- Hospital-level DP (one hospital's whole data). `DPFedAvg` is the server step
  of McMahan et al. 2018 ("Learning Differentially Private Recurrent Language
  Models", where it is called user-level DP): hospitals are Poisson-sampled,
  each clips its update before sending it, weights are bounded, the server adds
  Gaussian noise to the weighted sum and divides by a fixed denominator.

Every epsilon here comes from Opacus's RDP accountant (`accountant="rdp"`,
Mironov 2017, "Renyi Differential Privacy", with the RDP-to-(epsilon, delta)
conversion of Balle et al. 2020), in training, in the noise solver and in the
checks. Opacus's default accountant is PRV, which reports somewhat smaller
epsilons; mixing the two would compare numbers computed by different rules.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.federated import History, State
from helpers.hospital import Hospital, LeaveFederation, Update
from helpers.splits import Partition

# The one accountant type of this module, passed to Opacus everywhere.
ACCOUNTANT = "rdp"
# Orders of Opacus's RDPAccountant, used for every (epsilon, delta) conversion.
RDP_ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS)
# The largest noise multiplier the solver tries (Opacus's own search limit).
MAX_NOISE_MULTIPLIER = 1e6
# Epsilons above this are legal but promise little, so they draw a warning.
LARGE_EPSILON = 10.0
# Per-sample gradient modes of Opacus that `DPSGDStep` supports.
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")
# The modes in which Opacus hooks into the model without wrapping it.
_HOOK_MODES = ("hooks", "functorch")
# Relative slack on an update's norm when the server checks the clipping bound.
_NORM_SLACK = 1e-5

# torch warns on every backward pass through Opacus's per-sample hooks that the
# input images do not require gradients. That is expected here and unrelated to
# privacy, so only this message is silenced, inside the training loop.
_BACKWARD_HOOK_WARNING = "Full backward hook is firing"


def default_delta(n_samples: int) -> float:
    """Return the default delta for a data set of `n_samples` records, 1 / (10 n).

    Delta is the probability with which the epsilon guarantee may fail. It must
    stay well below 1 / n, because a mechanism that publishes one random record
    in full is (0, 1/n)-DP.
    """
    _check_count(n_samples, "n_samples")
    return 1.0 / (10 * n_samples)


def epsilon_spent(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float
) -> float:
    """Compute epsilon after `steps` subsampled Gaussian steps, by RDP accounting.

    This calls Opacus's RDP analysis directly (Mironov, Talwar and Zhang 2019,
    "Renyi Differential Privacy of the Sampled Gaussian Mechanism", converted
    with Balle et al. 2020), independent of any accountant object, so tests can
    compare an accountant's result with it.

    Raises:
        ValueError: on a noise multiplier < 0, a sample rate outside (0, 1],
            steps < 0 or delta outside (0, 1).
    """
    _check_noise_multiplier(noise_multiplier)
    _check_sample_rate(sample_rate)
    _check_delta(delta)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}.")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf

    rdp = rdp_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=int(steps),
        orders=list(RDP_ORDERS),
    )
    epsilon, _ = rdp_analysis.get_privacy_spent(
        orders=list(RDP_ORDERS), rdp=rdp, delta=delta
    )
    return float(epsilon)


def epsilon_floor(delta: float) -> float:
    """Return the smallest epsilon RDP accounting can report at `delta`.

    As the noise grows, the RDP of a step falls to 0 at every order alpha, and
    the conversion of Balle et al. 2020 leaves
    min over alpha of log((alpha - 1) / alpha) - (log(delta) + log(alpha)) /
    (alpha - 1). Over `RDP_ORDERS` (up to 63) this is about 0.10 at delta 1e-5:
    no budget below it covers even one step.
    """
    _check_delta(delta)
    orders = np.asarray(RDP_ORDERS)
    bounds = np.log((orders - 1) / orders) - (math.log(delta) + np.log(orders)) / (
        orders - 1
    )
    return float(bounds.min())


def solve_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> float:
    """Solve for the smallest noise multiplier whose epsilon after `steps` fits.

    Opacus's `get_noise_multiplier` with `accountant="rdp"` runs a bisection
    whose result never exceeds the target. Its tolerance here is 1% of the target
    (at most 0.01), so the final epsilon lies within 1% below it.

    Args:
        target_epsilon: the budget's epsilon, > 0.
        delta: the budget's delta, in (0, 1).
        sample_rate: probability that a record joins a step, in (0, 1].
        steps: the total number of steps the budget must cover, >= 1.

    Returns:
        The noise multiplier.

    Raises:
        ValueError: on invalid settings, or a budget too small for even one
            step at any noise multiplier up to `MAX_NOISE_MULTIPLIER`.
    """
    _check_epsilon(target_epsilon)
    _check_delta(delta)
    _check_sample_rate(sample_rate)
    _check_count(steps, "steps")

    floor = epsilon_floor(delta)
    if target_epsilon <= floor:
        raise ValueError(
            f"The privacy budget epsilon={target_epsilon:g} at delta={delta:g} is "
            f"too small for a single step: RDP accounting over the orders up to "
            f"{max(RDP_ORDERS)} reports at least epsilon={floor:.3f} for any step, "
            "however much noise it adds. Raise epsilon or delta."
        )
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=int(steps),
            accountant=ACCOUNTANT,
            epsilon_tolerance=min(0.01, 0.01 * target_epsilon),
        )
    )


def group_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    group_size: int,
) -> float:
    """Bound epsilon for a group of records, such as all images of one lesion.

    Group privacy for RDP (Mironov 2017, "Renyi Differential Privacy",
    Proposition 2): a mechanism that is (alpha, r)-RDP for one record is
    (alpha / 2^c, 3^c r)-RDP for groups of 2^c records, for alpha >= 2^(c+1).
    The group size is rounded up to the next power of two, the RDP of the whole
    run is computed at orders 2^c times those of `RDP_ORDERS` from 2 on, and the
    result is converted to (epsilon, delta) as usual.

    NOTE: the bound is loose. The factor 3^c grows faster than the group size
    (27 for groups of 5 to 8), and rounding up to a power of two adds more.
    It is an upper bound, not the group's true privacy loss.

    Raises:
        ValueError: on invalid settings or a group size < 1.
    """
    _check_noise_multiplier(noise_multiplier)
    _check_sample_rate(sample_rate)
    _check_delta(delta)
    _check_count(steps, "steps")
    _check_count(group_size, "group_size")
    if noise_multiplier == 0:
        return math.inf

    doublings = math.ceil(math.log2(group_size))
    group_orders = [order for order in RDP_ORDERS if order >= 2]
    single_rdp = rdp_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=int(steps),
        orders=[order * 2**doublings for order in group_orders],
    )
    epsilon, _ = rdp_analysis.get_privacy_spent(
        orders=group_orders, rdp=3**doublings * np.asarray(single_rdp), delta=delta
    )
    return float(epsilon)


def group_epsilon_delta(
    epsilon: float, delta: float, group_size: int
) -> tuple[float, float]:
    """Convert an (epsilon, delta) guarantee into one for groups of `group_size`.

    The textbook group-privacy rule for approximate DP (see Dwork and Roth
    2014, "The Algorithmic Foundations of Differential Privacy"):
    (k epsilon, k e^((k - 1) epsilon) delta). The delta
    term explodes at the epsilons of deep learning, which is why
    `group_epsilon` works from the RDP curve instead.

    Raises:
        ValueError: on epsilon < 0, delta outside (0, 1) or a group size < 1.
    """
    if not (isinstance(epsilon, int | float) and epsilon >= 0):
        raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}.")
    _check_delta(delta)
    _check_count(group_size, "group_size")
    k = int(group_size)
    exponent = (k - 1) * epsilon
    group_delta = math.inf if exponent > 700 else k * math.exp(exponent) * delta
    return k * float(epsilon), group_delta


class DPSGDStep:
    """One hospital's DP-SGD local-training step, with its own accountant.

    Build one per hospital for a whole federated run (see `plan_dp_sgd`) and
    pass them to `run_federated(local_steps=...)`. Every call trains the model
    it is given in place with Opacus: Poisson sampling at rate
    1 / ceil(n / batch_size) (the rate `PrivacyEngine.make_private` derives from
    a DataLoader), per-sample clipping to `max_grad_norm`, and Gaussian noise.
    The `PrivacyEngine` and its RDP accountant are created once, here, so the
    accountant composes every step of every round and is never reset. Opacus's
    hooks go onto the model that `Hospital.train` deep-copied for this round
    (`wrap_model=False`), and are removed afterwards. The "ew" mode instead
    trains through a wrapper that holds that model by reference. Either way the
    weights move in and out under the model's own state_dict keys, with no
    `_module.` prefix, and no wrapped object is ever copied.

    An empty Poisson batch is a step like any other: it adds noise, counts in
    the accountant and in `empty_batches`, and crashes nothing.

    Args:
        hospital: the hospital's name, for messages.
        n_samples: its number of training images.
        batch_size: the expected batch size that sets the sample rate.
        noise_multiplier: noise standard deviation over `max_grad_norm`, >= 0.
        max_grad_norm: per-sample clipping bound, > 0.
        delta: the delta at which epsilon is reported; `default_delta` if None.
        max_steps: the planned number of steps. A call that would go beyond it
            raises `LeaveFederation` before its first step. None for no limit.
        grad_sample_mode: Opacus's per-sample gradient mode, one of
            `GRAD_SAMPLE_MODES`.
        secure_mode: Opacus's cryptographically secure noise, which needs the
            torchcsprng package.

    Raises:
        ValueError: on invalid settings.
        ImportError: from Opacus, for secure_mode without torchcsprng.

    NOTE: without `secure_mode`, Opacus warns "Secure RNG turned off": the noise
    comes from torch's pseudo-random generator (seeded per round by
    `Hospital.train`), which an attacker who learns its state could predict,
    and floating-point sampling can leak through the low bits (Mironov 2012,
    "On Significance of the Least Significant Bits for Differential Privacy").
    Fine for teaching; a deployment needs secure_mode with torchcsprng.
    """

    def __init__(
        self,
        *,
        hospital: str,
        n_samples: int,
        batch_size: int,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float | None = None,
        max_steps: int | None = None,
        grad_sample_mode: str = "hooks",
        secure_mode: bool = False,
    ) -> None:
        _check_count(n_samples, "n_samples")
        _check_count(batch_size, "batch_size")
        _check_noise_multiplier(noise_multiplier)
        _check_max_grad_norm(max_grad_norm)
        if delta is None:
            delta = default_delta(n_samples)
        _check_delta(delta)
        _warn_if_delta_large(delta, n_samples, hospital)
        if max_steps is not None:
            _check_count(max_steps, "max_steps")
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got "
                f"{grad_sample_mode!r}."
            )

        self.hospital = str(hospital)
        self.n_samples = int(n_samples)
        self.batch_size = int(batch_size)
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.delta = float(delta)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.grad_sample_mode = grad_sample_mode
        self.steps_per_epoch = math.ceil(self.n_samples / self.batch_size)
        self.sample_rate = 1.0 / self.steps_per_epoch
        self.empty_batches = 0
        self._engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=secure_mode)
        self._log: list[dict[str, Any]] = []
        self._epsilon_cache: dict[int, float] = {}

    @property
    def steps(self) -> int:
        """Steps taken so far, over every round."""
        return sum(steps for _, _, steps in self._engine.accountant.history)

    @property
    def accountant(self) -> RDPAccountant:
        """The RDP accountant of this hospital, the same object for the whole run."""
        return self._engine.accountant

    @property
    def log(self) -> list[dict[str, Any]]:
        """One entry per call: steps, epsilon and delta so far, empty batches.

        Each epsilon is the RDP accountant's, for the steps taken up to the end
        of that call: the accountant's history holds one (noise multiplier,
        sample rate, steps) entry, so a prefix of it is the same entry with
        fewer steps.
        """
        entries = []
        for entry in self._log:
            if entry["steps"] not in self._epsilon_cache:
                (noise_multiplier, sample_rate, _), *rest = self.accountant.history
                if rest:
                    raise RuntimeError(
                        "The accountant's history has several (noise multiplier, "
                        "sample rate) entries, which DPSGDStep never creates."
                    )
                prefix = RDPAccountant()
                prefix.history = [(noise_multiplier, sample_rate, entry["steps"])]
                self._epsilon_cache[entry["steps"]] = float(
                    prefix.get_epsilon(self.delta)
                )
            entries.append({**entry, "epsilon": self._epsilon_cache[entry["steps"]]})
        return entries

    def epsilon(self) -> float:
        """Return the epsilon spent so far at this hospital's delta."""
        if self.steps == 0:
            return 0.0
        return float(self._engine.get_epsilon(self.delta))

    def __call__(
        self,
        model: nn.Module,
        dataset: TensorDataset,
        *,
        local_epochs: int,
        lr: float,
        batch_size: int,
        generator: torch.Generator,
        class_weights: torch.Tensor | None = None,
        logit_adjustment: torch.Tensor | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> float:
        """Train `model` in place with DP-SGD and return the mean training loss.

        The loss is the mean over the examples seen of each example's
        (class-weighted) cross-entropy. Each example's weight depends on its own
        label only, so its clipped gradient depends on nothing else.

        Clipping undoes class weights: once every per-sample gradient is scaled
        to `max_grad_norm`, a weight of 5 counts no more than a weight of 1.
        `logit_adjustment` rebalances in a way that survives clipping. It adds
        fixed per-class offsets to the logits during training only, and with
        offsets log(prior) the trained logits estimate a balanced classifier
        (Menon et al. 2021, "Long-tail Learning via Logit Adjustment"). Build
        the offsets from public label counts with `logit_offsets`.

        NOTE: the returned loss travels in `Update.train_loss` and is computed
        from private data without noise, so the DP guarantee does not cover it.
        Neither does `Update.n_samples`. A deployment would drop both or release
        them with noise of their own.

        Raises:
            LeaveFederation: if the call would take the hospital past
                `max_steps`; no step is taken.
            ValueError: if the data set or batch size differ from the plan, or
                on a data-dependent class weighting such as "balanced".
            opacus.validators.errors.UnsupportedModuleError: from Opacus's
                validator, for a model it cannot train privately (BatchNorm).
        """
        images, labels = dataset.tensors
        self._check_call(len(labels), batch_size, class_weights)
        if logit_adjustment is not None and not isinstance(
            logit_adjustment, torch.Tensor
        ):
            raise ValueError(
                f"logit_adjustment must be a tensor of per-class offsets or None, "
                f"got {logit_adjustment!r}. Build it with logit_offsets."
            )
        steps_now = local_epochs * self.steps_per_epoch
        if self.max_steps is not None and self.steps + steps_now > self.max_steps:
            raise LeaveFederation(
                f"hospital {self.hospital!r} would take {steps_now} more steps but "
                f"has {self.max_steps - self.steps} left of the {self.max_steps} "
                f"it planned for, so it stops at epsilon={self.epsilon():.3f} "
                f"(delta={self.delta:g}) rather than overspend its budget."
            )

        ModuleValidator.validate(model, strict=True)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        loader = DataLoader(dataset, batch_size=self.batch_size, generator=generator)
        # Opacus attaches hooks to the model itself in the hook-based modes. The
        # expanded-weights mode needs its wrapper, which holds the model by
        # reference (no copy), so training through it trains the model.
        wrap = self.grad_sample_mode not in _HOOK_MODES
        hooks, optimizer, loader = self._engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=self.grad_sample_mode,
            wrap_model=wrap,
        )
        forward = hooks if wrap else model
        weights = None if class_weights is None else class_weights.to(torch.float32)
        offsets = (
            None if logit_adjustment is None else logit_adjustment.to(torch.float32)
        )

        model.train()
        total_loss, n_seen, n_empty = 0.0, 0, 0
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_BACKWARD_HOOK_WARNING)
                for _ in range(local_epochs):
                    for batch_images, batch_labels in loader:
                        optimizer.zero_grad()
                        logits = forward(batch_images)
                        if offsets is not None:
                            logits = logits + offsets
                        loss_sum = _weighted_loss_sum(logits, batch_labels, weights)
                        # Opacus scales by the batch size under "mean" reduction
                        # and divides the noised sum by the expected batch size.
                        (loss_sum / max(len(batch_labels), 1)).backward()
                        optimizer.step()

                        n_empty += len(batch_labels) == 0
                        total_loss += float(loss_sum.detach())
                        n_seen += len(batch_labels)
        finally:
            if wrap:
                hooks.remove_hooks()
            hooks.cleanup()
            optimizer.zero_grad(set_to_none=True)
            _drop_opacus_attributes(model)

        self.empty_batches += n_empty
        # Epsilon is filled in when the log is read, so that the RDP computation
        # (about 0.1 s) stays out of the training time.
        self._log.append(
            {"steps": self.steps, "delta": self.delta, "empty_batches": n_empty}
        )
        return total_loss / n_seen if n_seen else 0.0

    def _check_call(self, n_labels: int, batch_size: int, class_weights: Any) -> None:
        if n_labels != self.n_samples:
            raise ValueError(
                f"DPSGDStep of hospital {self.hospital!r} was planned for "
                f"{self.n_samples} training images but got {n_labels}. Build one "
                "step per hospital from its own n_samples."
            )
        if batch_size != self.batch_size:
            raise ValueError(
                f"DPSGDStep of hospital {self.hospital!r} was planned with "
                f"batch_size={self.batch_size}, which sets its sample rate, but "
                f"the round asked for batch_size={batch_size}. Pass the planned "
                "batch size to run_federated."
            )
        if class_weights is not None and not isinstance(class_weights, torch.Tensor):
            raise ValueError(
                f"class_weights must be a tensor fixed before training or None, got "
                f"{class_weights!r}. Weights computed from the hospital's own "
                "labels, such as 'balanced', depend on private data that DP-SGD "
                "does not protect. Use weights from public label counts."
            )

    def __repr__(self) -> str:
        return (
            f"DPSGDStep(hospital={self.hospital!r}, steps={self.steps}, "
            f"epsilon={self.epsilon():.3f}, delta={self.delta:g})"
        )


def plan_dp_sgd(
    hospitals: Sequence[Hospital],
    *,
    target_epsilon: float,
    delta: float | None = None,
    rounds: int,
    local_epochs: int,
    batch_size: int,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
    secure_mode: bool = False,
) -> dict[str, DPSGDStep]:
    """Plan every hospital's privacy budget for a whole run and build its step.

    Hospital h with n_h training images takes ceil(n_h / batch_size) steps per
    local epoch, so rounds * local_epochs * ceil(n_h / batch_size) steps in all.
    Its noise multiplier is solved once, for that total, with
    `solve_noise_multiplier`, and its step stops it before it exceeds the total.
    Each hospital reaches epsilon at most `target_epsilon` at its own delta, if
    it takes part in every round.

    Args:
        hospitals: the federation.
        target_epsilon: each hospital's epsilon for the whole run, > 0.
        delta: each hospital's delta, or None for `default_delta` of its n.
        rounds, local_epochs, batch_size: as they will be passed to
            `run_federated`.
        max_grad_norm: per-sample clipping bound, > 0.
        grad_sample_mode, secure_mode: as in `DPSGDStep`.

    Returns:
        Hospital name -> `DPSGDStep`, ready for `run_federated(local_steps=...)`.

    Raises:
        ValueError: on invalid settings or a budget too small for one step.
    """
    _check_epsilon(target_epsilon)
    _check_count(rounds, "rounds")
    _check_count(local_epochs, "local_epochs")
    _check_count(batch_size, "batch_size")
    _check_max_grad_norm(max_grad_norm)

    steps = {}
    for hospital in hospitals:
        n_samples = hospital.n_samples
        hospital_delta = default_delta(n_samples) if delta is None else delta
        steps_per_epoch = math.ceil(n_samples / batch_size)
        total_steps = rounds * local_epochs * steps_per_epoch
        noise_multiplier = solve_noise_multiplier(
            target_epsilon=target_epsilon,
            delta=hospital_delta,
            sample_rate=1.0 / steps_per_epoch,
            steps=total_steps,
        )
        steps[hospital.name] = DPSGDStep(
            hospital=hospital.name,
            n_samples=n_samples,
            batch_size=batch_size,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            delta=hospital_delta,
            max_steps=total_steps,
            grad_sample_mode=grad_sample_mode,
            secure_mode=secure_mode,
        )
    return steps


def epsilon_table(history: History, steps: Mapping[str, DPSGDStep]) -> pd.DataFrame:
    """Tabulate each hospital's epsilon so far after every round of a run.

    A hospital's k-th log entry belongs to the k-th round in which it sent an
    update. In rounds it sat out or after it left, its epsilon stays put.

    Returns:
        DataFrame indexed by round, one column per hospital in `steps`.
    """
    columns = {}
    for name, step in steps.items():
        entries = iter(step.log)
        epsilon, values = 0.0, []
        for record in history:
            if name in record["hospitals"]:
                epsilon = next(entries)["epsilon"]
            values.append(epsilon)
        columns[name] = values
    index = pd.Index([record["round"] for record in history], name="round")
    return pd.DataFrame(columns, index=index)


def logit_offsets(label_counts: Sequence[int] | np.ndarray, *, tau: float = 1.0):
    """Return per-class logit offsets tau * log(prior) from public label counts.

    For `DPSGDStep(logit_adjustment=...)`. A class with no examples gets the
    offset of a class with half an example, so no offset is infinite.

    Raises:
        ValueError: on negative or all-zero counts, or tau < 0.
    """
    counts = np.asarray(label_counts, dtype=float)
    if counts.ndim != 1 or np.any(counts < 0) or counts.sum() == 0:
        raise ValueError(
            f"label_counts must be a 1-D array of non-negative counts with a "
            f"positive total, got {label_counts!r}."
        )
    if not (isinstance(tau, int | float) and tau >= 0):
        raise ValueError(f"tau must be a number >= 0, got {tau!r}.")
    prior = np.maximum(counts, 0.5) / counts.sum()
    return torch.as_tensor(tau * np.log(prior), dtype=torch.float32)


def check_dp_model(model: nn.Module) -> None:
    """Raise Opacus's validator error if DP-SGD cannot train `model`.

    Opacus needs one gradient per example. BatchNorm mixes the examples of a
    batch, so Opacus rejects it; `opacus.validators.ModuleValidator.fix` swaps
    it for GroupNorm, which `helpers.models.SkinLesionCNN` uses already.

    Raises:
        opacus.validators.errors.UnsupportedModuleError: naming each module
            that Opacus rejects and why.
    """
    ModuleValidator.validate(model, strict=True)


class DPFedAvg:
    """Hospital-level DP federated averaging (McMahan et al. 2018), the server step.

    With hospitals Poisson-sampled at rate q (`run_federated(sampling="poisson",
    fraction=q)`), each clipping its update to L2 norm `max_update_norm` and
    capping its weight at `max_weight` samples in the hospital
    (`run_federated(max_update_norm=..., max_weight=...)`), one round computes

        w_k = n_k / max_weight  (so 0 < w_k <= 1)
        new = global + (sum_k w_k delta_k + N(0, (z S)^2 I)) / (q W)

    with S = `max_update_norm`, z = `noise_multiplier` and W the sum of every
    hospital's bounded weight. Adding or removing one hospital moves the
    weighted sum by at most S, so the noise makes each round a subsampled
    Gaussian mechanism at rate q. The fixed denominator q W (the expected total
    weight, the paper's estimator f_f) keeps that bound: dividing by the
    sampled hospitals' actual total weight would leak who took part. The
    accountant is Opacus's RDP accountant, stepped once per round at rate q.

    Args:
        noise_multiplier: z, noise standard deviation over S, >= 0.
        max_update_norm: S, the clipping bound every update must meet, > 0.
        max_weight: the weight cap in samples, >= 1.
        total_weight: W, the sum over all hospitals of min(n_k, max_weight) /
            max_weight (`bounded_total_weight`).
        sample_rate: q, the hospitals' Poisson sampling rate, in (0, 1].
        seed: seed of the server's noise generator.

    Raises:
        ValueError: on invalid settings.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        max_update_norm: float,
        max_weight: int,
        total_weight: float,
        sample_rate: float,
        seed: int = 0,
    ) -> None:
        _check_noise_multiplier(noise_multiplier)
        _check_positive(max_update_norm, "max_update_norm")
        _check_count(max_weight, "max_weight")
        _check_positive(total_weight, "total_weight")
        _check_sample_rate(sample_rate)
        self.noise_multiplier = float(noise_multiplier)
        self.max_update_norm = float(max_update_norm)
        self.max_weight = int(max_weight)
        self.total_weight = float(total_weight)
        self.sample_rate = float(sample_rate)
        self.accountant = RDPAccountant()
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def rounds(self) -> int:
        """Rounds aggregated so far."""
        return sum(steps for _, _, steps in self.accountant.history)

    def epsilon(self, delta: float) -> float:
        """Return the hospital-level epsilon spent so far at `delta`."""
        _check_delta(delta)
        if self.rounds == 0:
            return 0.0
        return float(self.accountant.get_epsilon(delta))

    def __call__(self, global_state: State, updates: Sequence[Update]) -> State:
        """Aggregate one round's clipped updates with noise; see the class doc.

        Raises:
            ValueError: if an update exceeds the clipping bound or the weight
                cap, or a state entry is not floating point, because the
                sensitivity bound would not hold.
        """
        for key, value in global_state.items():
            if not torch.is_floating_point(value):
                raise ValueError(
                    f"DPFedAvg adds noise to every state entry, but {key} is "
                    f"{value.dtype}. Use a model without integer buffers."
                )
        for update in updates:
            self._check_update(update)

        noise_std = self.noise_multiplier * self.max_update_norm
        denominator = self.sample_rate * self.total_weight
        new_state = {}
        for key, value in global_state.items():
            total = torch.zeros(value.shape, dtype=torch.float64)
            for update in updates:
                weight = update.n_samples / self.max_weight
                total += weight * update.delta[key].to(torch.float64)
            noise = torch.normal(
                0.0, noise_std, size=value.shape, generator=self._generator
            ).to(torch.float64)
            moved = value.to(torch.float64) + (total + noise) / denominator
            new_state[key] = moved.to(value.dtype)

        self.accountant.step(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate
        )
        return new_state

    def _check_update(self, update: Update) -> None:
        norm = math.sqrt(
            sum(float(torch.sum(v.double() ** 2)) for v in update.delta.values())
        )
        if norm > self.max_update_norm * (1 + _NORM_SLACK):
            raise ValueError(
                f"The update of hospital {update.hospital!r} has L2 norm {norm:.4g}, "
                f"above max_update_norm={self.max_update_norm:g}, so the noise would "
                "not cover it. Pass max_update_norm to run_federated so every "
                "hospital clips before sending."
            )
        if not 0 < update.n_samples <= self.max_weight:
            raise ValueError(
                f"The update of hospital {update.hospital!r} has weight "
                f"{update.n_samples}, outside 1..max_weight={self.max_weight}. Pass "
                "max_weight to run_federated so every hospital caps its weight."
            )

    def __repr__(self) -> str:
        return (
            f"DPFedAvg(noise_multiplier={self.noise_multiplier:.4g}, "
            f"max_update_norm={self.max_update_norm:g}, rounds={self.rounds})"
        )


def bounded_total_weight(hospitals: Sequence[Hospital], max_weight: int) -> float:
    """Sum min(n_k, max_weight) / max_weight over the hospitals: DPFedAvg's W."""
    _check_count(max_weight, "max_weight")
    return float(sum(min(h.n_samples, max_weight) / max_weight for h in hospitals))


def plan_dp_fedavg(
    hospitals: Sequence[Hospital],
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    sample_rate: float,
    max_update_norm: float,
    max_weight: int,
    seed: int = 0,
) -> DPFedAvg:
    """Solve hospital-level DP-FedAvg's noise for a budget over `rounds` rounds.

    Each round is one subsampled Gaussian step at the hospitals' sampling rate,
    so the noise multiplier is solved for `rounds` steps at `sample_rate`.

    Raises:
        ValueError: on invalid settings or a budget too small for one round.
    """
    _warn_if_delta_large(delta, len(hospitals), "the federation (per hospital)")
    noise_multiplier = solve_noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=rounds,
    )
    return DPFedAvg(
        noise_multiplier=noise_multiplier,
        max_update_norm=max_update_norm,
        max_weight=max_weight,
        total_weight=bounded_total_weight(hospitals, max_weight),
        sample_rate=sample_rate,
        seed=seed,
    )


def split_sites(
    partition: Partition,
    *,
    groups: np.ndarray,
    n_hospitals: int,
    seed: int = 0,
) -> Partition:
    """Split every site of a partition into small clinics of similar size.

    Each site gets a number of clinics proportional to its image count (at least
    one), and its lesions are dealt to them in a seeded random order, each lesion
    to the clinic with the fewest images so far. A lesion goes whole to one
    clinic. Clinic names are "<site>-<number>".

    Args:
        partition: the site partition to split.
        groups: (N,) lesion id per image.
        n_hospitals: the total number of clinics, at least the number of sites.
        seed: seed of the lesion order.

    Returns:
        The clinic partition.

    Raises:
        ValueError: on mismatched lengths or too few clinics.
    """
    groups = np.asarray(groups)
    if groups.shape != partition.assignment.shape:
        raise ValueError(
            f"groups must have one lesion id per image ({partition.assignment.size}),"
            f" got shape {groups.shape}."
        )
    _check_count(n_hospitals, "n_hospitals")
    sizes = partition.sizes
    if n_hospitals < partition.n_hospitals:
        raise ValueError(
            f"n_hospitals={n_hospitals} is fewer than the {partition.n_hospitals} "
            "sites; every site needs at least one clinic."
        )

    shares = np.maximum(1, np.floor(n_hospitals * sizes / sizes.sum())).astype(int)
    while shares.sum() < n_hospitals:
        shares[np.argmax(sizes / shares)] += 1
    while shares.sum() > n_hospitals:
        shares[np.argmax(np.where(shares > 1, shares / sizes, -1))] -= 1

    rng = np.random.default_rng(seed)
    assignment = np.empty(partition.assignment.size, dtype=np.int64)
    names = []
    for site, site_name in enumerate(partition.names):
        first = len(names)
        names += [f"{site_name}-{number:02d}" for number in range(shares[site])]
        counts = np.zeros(shares[site], dtype=np.int64)
        site_images = np.flatnonzero(partition.assignment == site)
        lesions = np.unique(groups[site_images])
        for lesion in rng.permutation(lesions):
            images = site_images[groups[site_images] == lesion]
            clinic = int(np.argmin(counts))
            assignment[images] = first + clinic
            counts[clinic] += len(images)
    return Partition(
        names=tuple(names),
        assignment=assignment,
        description=f"{partition.description}, split into {n_hospitals} clinics",
    )


def _drop_opacus_attributes(model: nn.Module) -> None:
    # Opacus leaves per-sample gradients and their sums on the parameters.
    for parameter in model.parameters():
        for attribute in ("grad_sample", "summed_grad"):
            if hasattr(parameter, attribute):
                delattr(parameter, attribute)


def _weighted_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    losses = F.cross_entropy(logits, labels, reduction="none")
    if weights is not None:
        losses = losses * weights[labels]
    return losses.sum()


def _warn_if_delta_large(delta: float, n_records: int, owner: str) -> None:
    if delta >= 1 / n_records:
        warnings.warn(
            f"delta={delta:g} for {owner} is not below 1/n = {1 / n_records:.3g} "
            f"(n = {n_records}), so the guarantee allows releasing a record in "
            "full. Choose delta well below 1/n, such as default_delta(n).",
            stacklevel=3,
        )


def _check_epsilon(epsilon: Any) -> None:
    if not (isinstance(epsilon, int | float) and not isinstance(epsilon, bool)):
        raise ValueError(f"epsilon must be a number > 0, got {epsilon!r}.")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(
            f"epsilon must be a finite number > 0, got {epsilon!r}. Epsilon 0 "
            "would mean the output ignores the data entirely."
        )
    if epsilon > LARGE_EPSILON:
        warnings.warn(
            f"epsilon={epsilon:g} is above {LARGE_EPSILON:g}: the guarantee then "
            f"allows likelihood ratios up to e^{epsilon:g}, which bounds little.",
            stacklevel=3,
        )


def _check_delta(delta: Any) -> None:
    if not (isinstance(delta, int | float) and not isinstance(delta, bool)):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}.")
    if not 0 < delta < 1:
        raise ValueError(
            f"delta must lie in (0, 1), got {delta!r}. It is a probability of "
            "failure, typically well below 1 / n."
        )


def _check_max_grad_norm(max_grad_norm: Any) -> None:
    _check_positive(max_grad_norm, "max_grad_norm")


def _check_positive(value: Any, name: str) -> None:
    if not (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def _check_noise_multiplier(noise_multiplier: Any) -> None:
    if not (
        isinstance(noise_multiplier, int | float)
        and not isinstance(noise_multiplier, bool)
        and math.isfinite(noise_multiplier)
        and noise_multiplier >= 0
    ):
        raise ValueError(
            f"noise_multiplier must be a finite number >= 0, got "
            f"{noise_multiplier!r}. It is the noise standard deviation over the "
            "clipping bound; 0 adds no noise and gives no privacy."
        )


def _check_sample_rate(sample_rate: Any) -> None:
    if not (isinstance(sample_rate, int | float) and 0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")


def _check_count(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}.")
