"""Federated averaging whose server receives only masked updates and their sum.

`SecureAggregator` is an aggregation step for `helpers.federated.run_federated`
(`aggregate=`). Each round it runs one instance of the pairwise-masking
protocol of `helpers.secure_aggregation`:

- hospital side (`encode_update`, then `SecAggHospital`): each hospital checks
  that its update was clipped to the declared L2 bound `max_update_norm` and
  its weight capped at `max_weight` (run_federated passes both to
  `Hospital.train`, which clips inside the hospital), optionally adds its own
  noise, multiplies the update by its weight n_k, encodes it in fixed point,
  appends n_k, and masks the vector;
- server side (`SecAggServer`): from the channel it learns the sum of
  n_k * delta_k and the sum of n_k, and nothing else, and it steps the global
  model by their ratio, which is federated averaging.

A round's weighted sum differs from the plain one by at most n * quantum / 2,
for n hospitals, because each hospital rounds its values once.

NOTE: run_federated still hands this step the hospitals' `Update` objects,
because all parties run in one process. This class passes each one only to its
hospital's side of the protocol, and the server side reads nothing but the
channel. The loop's own `validate_updates`, which a real server could not run
on masked inputs, still reads them: in a deployment the hospitals would run
those checks themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from helpers.crypto import warn_seeded
from helpers.fixed_point import FixedPoint, check_float_setting, check_int_setting
from helpers.hospital import Update
from helpers.secure_aggregation import (
    STEPS,
    Channel,
    default_threshold,
    run_additive_sharing,
    run_protocol,
)

PROTOCOLS = ("masking", "additive")

State = dict[str, torch.Tensor]
# hospital name, its clipped update as one float64 vector -> noise to add to it.
HospitalNoise = Callable[[str, np.ndarray], np.ndarray]

# clip_update scales float32 tensors, which can leave the norm a few float32
# rounding steps above the bound. The encoding's range allows for that much.
CLIP_SLACK = 1e-6


@dataclass
class RoundReport:
    """The results of one secure round.

    Attributes:
        round: the aggregator's call number, from 1 (see `SecureAggregator`
            on how calls and rounds of `run_federated` line up).
        hospitals: the hospitals that started the protocol.
        included: the hospitals whose update is in the sum.
        dropped_before_masking: hospitals left out because their masked input
            never arrived.
        dropped_after_masking: included hospitals that did not help unmask.
        threshold: t of the round (every hospital for additive sharing).
        encoding: the fixed-point encoding of the updates.
        weighted_sum: the decoded sum of n_k * delta_k (float64, flat, in
            state_dict order).
        total_weight: the securely summed sample count, sum of n_k.
        bytes_received: payload bytes the server received in the round.
        bytes_sent: payload bytes the server sent in the round.
    """

    round: int
    hospitals: list[str]
    included: list[str]
    dropped_before_masking: list[str]
    dropped_after_masking: list[str]
    threshold: int
    encoding: FixedPoint
    weighted_sum: np.ndarray
    total_weight: int
    bytes_received: int
    bytes_sent: int


class SecureAggregator:
    """Server step `(global_state, updates) -> new_state` with secure aggregation.

    new = global + server_lr * sum_k(n_k * delta_k) / sum_k(n_k), both sums
    computed by the protocol, so the server never receives a single update or
    a single n_k. With `server_momentum` beta > 0 the server steps along the
    velocity v <- beta * v + mean instead (FedAvgM, as `ServerMomentum` in
    `helpers.federated`); it works on the decoded mean only, so any DP noise
    the hospitals added covers it too. Use the same `max_update_norm` and
    `max_weight` in `run_federated`, whose hospitals then clip and cap before
    sending.

    Args:
        max_update_norm: the declared L2 bound of every update.
        max_weight: the declared cap on every hospital's weight n_k.
        precision_bits: fixed-point bits after the binary point.
        threshold: Shamir's t per round, by default a majority of the round's
            hospitals (`default_threshold`).
        seed: None for keys from os.urandom; an int for the reproducible test
            mode, which a deployment must never use (it warns).
        dropouts: round number -> {hospital: step it drops out at}, to
            simulate hospitals that go offline (see `run_protocol`). Round k
            is the k-th call to this aggregator (see the note below).
        hospital_noise: a hook for hospital-level DP noise: called as
            `hospital_noise(name, clipped_delta)` inside each hospital, it
            returns noise of the same shape, added before weighting and masking.
        noise_bound: the largest magnitude the noise may add to any one value;
            it widens the encoding's range. Each hospital checks its noise
            against it, and a larger value raises ValueError naming the
            hospital.
        server_lr: step size on the averaged update.
        server_momentum: the server momentum beta in [0, 1); 0 for plain
            averaging. The velocity persists across calls.
        protocol: "masking" for the dropout-tolerant pairwise masking, or
            "additive" for plain additive sharing between the hospitals
            (`run_additive_sharing`), which needs every hospital and takes no
            dropouts or threshold.
        keep_rounds: how many of the latest rounds the channel keeps on
            record, None for all. The record keeps every masked vector, 8 bytes
            per parameter per hospital per round, so long runs of large models
            should keep a few.

    Attributes:
        channel: the record of every message the server received.
        rounds: one RoundReport per call that returned.
        velocity: the server's momentum velocity after the latest round, None
            before the first or without server momentum.

    Raises:
        TypeError: on a setting of the wrong type (a bool or a str in place
            of a number, for example).
        ValueError: on invalid settings.

    Note:
        The aggregator counts rounds as calls to itself: the k-th call,
        counting calls that raised, is round k, with session label "round k",
        and `dropouts[k]` applies to it. `run_federated` calls it once in each
        of its rounds, except in a round where every sampled hospital left
        the federation, which keeps the previous weights without a call, and
        a call that raises ends the run. So in a run where a whole round's
        sample leaves, `dropouts` keyed by run_federated's round number land
        one round later than intended from then on: compare them with
        `RoundReport.round`.
    """

    def __init__(
        self,
        *,
        max_update_norm: float,
        max_weight: int,
        precision_bits: int = 24,
        threshold: int | None = None,
        seed: int | None = None,
        dropouts: Mapping[int, Mapping[str, str]] | None = None,
        hospital_noise: HospitalNoise | None = None,
        noise_bound: float = 0.0,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        protocol: str = "masking",
        keep_rounds: int | None = None,
    ) -> None:
        max_update_norm = check_float_setting(max_update_norm, "max_update_norm")
        max_weight = check_int_setting(max_weight, "max_weight", minimum=1)
        precision_bits = check_int_setting(precision_bits, "precision_bits", minimum=0)
        if threshold is not None:
            threshold = check_int_setting(threshold, "threshold", minimum=2)
        noise_bound = check_float_setting(noise_bound, "noise_bound", allow_zero=True)
        if hospital_noise is None and noise_bound > 0:
            raise ValueError("noise_bound is set but no hospital_noise is given.")
        server_lr = check_float_setting(server_lr, "server_lr")
        server_momentum = check_float_setting(
            server_momentum, "server_momentum", allow_zero=True
        )
        if server_momentum >= 1:
            raise ValueError(
                f"server_momentum must lie in [0, 1), got {server_momentum!r}."
            )
        if keep_rounds is not None:
            keep_rounds = check_int_setting(keep_rounds, "keep_rounds", minimum=1)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
        if protocol == "additive" and (dropouts or threshold is not None):
            raise ValueError(
                "Additive sharing tolerates no dropout and has no threshold; use "
                'protocol="masking" to simulate dropouts.'
            )
        if max_update_norm * 2**precision_bits < 1:
            raise ValueError(
                f"max_update_norm {max_update_norm:g} is below the quantum "
                f"2^-{precision_bits}: every update would encode as 0. Raise "
                "precision_bits."
            )

        self.max_update_norm = max_update_norm
        self.max_weight = max_weight
        self.precision_bits = precision_bits
        self.threshold = threshold
        self.seed = seed
        self.dropouts = _check_dropout_plan(dropouts)
        self.hospital_noise = hospital_noise
        self.noise_bound = noise_bound
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.velocity: np.ndarray | None = None
        self._layout: list[tuple[str, tuple[int, ...]]] | None = None
        self.protocol = protocol
        self.keep_rounds = keep_rounds
        self.channel = Channel()
        self.rounds: list[RoundReport] = []
        self._calls = 0
        self._oldest_kept = 1
        self.encoding_for(2)  # Reject settings whose ring cannot exist.
        if seed is not None:
            warn_seeded()

    def encoding_for(self, n_hospitals: int) -> FixedPoint:
        """Return the fixed-point encoding sized for a round of `n_hospitals`.

        One value is at most max_weight * (max_update_norm + noise_bound) in
        magnitude, so the sum needs n times that range, and the ring grows
        with the number of hospitals.
        """
        max_abs = self.max_weight * (
            self.max_update_norm * (1 + CLIP_SLACK) + self.noise_bound
        )
        return FixedPoint(
            precision_bits=self.precision_bits,
            max_abs=max_abs,
            n_summands=n_hospitals,
        )

    def __call__(self, global_state: State, updates: Sequence[Update]) -> State:
        """Run one protocol instance over the updates and apply their mean.

        Every call is a new round with a fresh session, even after a call
        that raised, so a repeated round never reuses its masks.

        Raises:
            ValueError: on fewer than 2 updates, two updates from one
                hospital, or an update that fails a hospital-side check
                (`encode_update`).
            ProtocolError: if too few hospitals remain at a protocol step.
        """
        updates = list(updates)
        names = [update.hospital for update in updates]
        self._calls += 1
        round_number = self._calls
        if len(updates) < 2:
            raise ValueError(
                f"Round {round_number}: secure aggregation needs at least 2 "
                f"updates, got {len(updates)}, because the sum of one update is "
                "that update. Sample more hospitals per round."
            )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"Round {round_number}: hospitals {repeated} sent more than one "
                "update. Each hospital takes part in a round once, with one "
                "update, so that none is dropped or counted twice."
            )
        if self.server_momentum > 0:
            layout = [(key, tuple(value.shape)) for key, value in global_state.items()]
            if self._layout is not None and layout != self._layout:
                raise ValueError(
                    f"Round {round_number}: the model's state_dict keys or shapes "
                    "differ from the previous round's, so the server's momentum "
                    "velocity does not fit it. Use a new SecureAggregator for "
                    "another model."
                )
            self._layout = layout
        session = _session_of(round_number)
        encoding = self.encoding_for(len(updates))
        threshold = (
            default_threshold(len(updates))
            if self.threshold is None
            else self.threshold
        )

        # Hospital side: every hospital encodes its own update.
        encoded = {
            update.hospital: encode_update(
                update,
                global_state,
                encoding=encoding,
                max_update_norm=self.max_update_norm,
                max_weight=self.max_weight,
                hospital_noise=self.hospital_noise,
                noise_bound=self.noise_bound,
            )
            for update in updates
        }

        if self.protocol == "additive":
            total = run_additive_sharing(
                encoded,
                encoding=encoding,
                channel=self.channel,
                session=session,
                seed=self.seed,
            )
            included, before, after = names, [], []
            threshold = len(updates)
        else:
            result = run_protocol(
                encoded,
                encoding=encoding,
                threshold=threshold,
                dropouts=self.dropouts.get(round_number),
                channel=self.channel,
                session=session,
                seed=self.seed,
            )
            total = result.total
            included = result.included
            before = result.dropped_before_masking
            after = result.dropped_after_masking

        # Server side: decode the two sums and step the model.
        signed = encoding.to_signed(total)
        weighted_sum = signed[:-1].astype(np.float64) * encoding.quantum
        total_weight = int(signed[-1])
        if total_weight <= 0:
            raise ValueError(
                f"Round {round_number}: the summed weight is {total_weight}, so the "
                "average is undefined."
            )
        step = weighted_sum / total_weight
        if self.server_momentum > 0:
            previous = 0.0 if self.velocity is None else self.velocity
            self.velocity = self.server_momentum * previous + step
            step = self.velocity
        new_state = _apply_mean(global_state, step, self.server_lr)

        self.rounds.append(
            RoundReport(
                round=round_number,
                hospitals=names,
                included=included,
                dropped_before_masking=before,
                dropped_after_masking=after,
                threshold=threshold,
                encoding=encoding,
                weighted_sum=weighted_sum,
                total_weight=total_weight,
                bytes_received=self.channel.bytes_received(session),
                bytes_sent=self.channel.bytes_sent(session),
            )
        )
        if self.keep_rounds is not None:
            # Calls that raised left their messages too, so every older
            # session goes, not only the one that just fell out of the window.
            oldest_kept = round_number - self.keep_rounds + 1
            for old in range(self._oldest_kept, oldest_kept):
                self.channel.discard(_session_of(old))
            self._oldest_kept = max(self._oldest_kept, oldest_kept)
        return new_state

    def __repr__(self) -> str:
        return (
            f"SecureAggregator(max_update_norm={self.max_update_norm}, "
            f"max_weight={self.max_weight}, precision_bits={self.precision_bits})"
        )


def encode_update(
    update: Update,
    global_state: State,
    *,
    encoding: FixedPoint,
    max_update_norm: float,
    max_weight: int,
    hospital_noise: HospitalNoise | None = None,
    noise_bound: float = 0.0,
) -> np.ndarray:
    """Encode one hospital's weighted update and weight: the hospital-side input.

    The vector is n_k * delta_k (every state_dict tensor flattened, in
    `global_state`'s order) in fixed point, followed by n_k as a plain integer,
    which fits the ring because n_k <= max_weight <= encoding.max_integer.

    Args:
        update: the hospital's clipped update.
        global_state: the global model's state_dict, for the key order.
        encoding: the round's fixed-point encoding.
        max_update_norm: the declared L2 bound of the update.
        max_weight: the declared cap on the weight n_k.
        hospital_noise: optional noise hook (see `SecureAggregator`).
        noise_bound: the largest magnitude any one noise value may have.

    Raises:
        TypeError: if the weight `n_samples` is not an int (a float or a
            bool; NumPy integers pass).
        ValueError: if the update's keys or shapes differ from the global
            state, its norm exceeds `max_update_norm` (it was not clipped in the
            hospital), or its weight is negative or exceeds `max_weight`. Also
            if the noise is not finite, has the wrong shape or exceeds
            `noise_bound`, or a noisy value falls outside the encoding's range.
    """
    name = update.hospital
    n_samples = _check_weight(update, max_weight)
    delta = flatten_delta(update, global_state)
    # A plain sum of squares: np.linalg.norm calls BLAS, whose threads can stall
    # on a busy machine.
    norm = math.sqrt(float(np.sum(delta * delta)))
    if norm > max_update_norm * (1 + CLIP_SLACK):
        raise ValueError(
            f"Hospital {name!r}: the update's L2 norm {norm:.6g} exceeds the declared "
            f"bound {max_update_norm:g}. Pass max_update_norm={max_update_norm:g} to "
            "run_federated so that every hospital clips before encoding."
        )

    if hospital_noise is not None:
        noise = _checked_noise(name, hospital_noise(name, delta.copy()), delta)
        largest = float(np.max(np.abs(noise))) if noise.size else 0.0
        if largest > noise_bound:
            raise ValueError(
                f"Hospital {name!r}: a noise value of magnitude {largest!r} exceeds "
                f"the declared noise_bound {noise_bound!r}. Declare a larger "
                "noise_bound, or bound the noise inside hospital_noise."
            )
        delta = delta + noise

    try:
        values = encoding.encode(n_samples * delta)
    except ValueError as error:
        raise ValueError(f"Hospital {name!r}: {error}") from error
    return np.append(values, np.uint64(n_samples))


def _check_weight(update: Update, max_weight: int) -> int:
    name = update.hospital
    try:
        n_samples = check_int_setting(update.n_samples, "n_samples")
    except TypeError as error:
        raise TypeError(
            f"Hospital {name!r}: {error} The weight is a count of training "
            "examples, so a fraction would be truncated in the sum of weights "
            "but not in the weighted update."
        ) from error
    if n_samples < 0:
        raise ValueError(
            f"Hospital {name!r}: the weight n_samples must be >= 0, got {n_samples}."
        )
    if n_samples > max_weight:
        raise ValueError(
            f"Hospital {name!r}: the weight {n_samples} exceeds the declared "
            f"max_weight {max_weight}. Pass max_weight={max_weight} to run_federated."
        )
    return n_samples


def _checked_noise(name: str, noise: object, delta: np.ndarray) -> np.ndarray:
    if isinstance(noise, torch.Tensor):
        noise = noise.detach().cpu().numpy()
    noise = np.asarray(noise)
    if noise.dtype.kind not in "iuf":
        raise ValueError(
            f"Hospital {name!r}: hospital_noise must return real numbers, got dtype "
            f"{noise.dtype}."
        )
    if noise.shape != delta.shape:
        raise ValueError(
            f"Hospital {name!r}: hospital_noise must return noise of shape "
            f"{delta.shape}, got shape {noise.shape}."
        )
    noise = noise.astype(np.float64)
    if not np.all(np.isfinite(noise)):
        raise ValueError(
            f"Hospital {name!r}: hospital_noise returned non-finite values (NaN or "
            "infinity). It must return finite noise."
        )
    return noise


def _check_dropout_plan(
    dropouts: Mapping[int, Mapping[str, str]] | None,
) -> dict[int, dict[str, str]]:
    plan = {}
    for round_number, steps in (dropouts or {}).items():
        key = check_int_setting(round_number, "a dropouts round number", minimum=1)
        bad = {name: step for name, step in steps.items() if step not in STEPS}
        if bad:
            raise ValueError(
                f"dropouts[{key}] must map hospitals to one of {STEPS}, got {bad}."
            )
        plan[key] = dict(steps)
    return plan


def flatten_delta(update: Update, global_state: State) -> np.ndarray:
    """Concatenate an update's tensors in `global_state`'s key order, as float64.

    Raises:
        ValueError: if keys or shapes differ from `global_state`.
    """
    if update.delta.keys() != global_state.keys():
        missing = sorted(global_state.keys() - update.delta.keys())
        extra = sorted(update.delta.keys() - global_state.keys())
        raise ValueError(
            f"Hospital {update.hospital!r}: the update's keys differ from the global "
            f"model's (missing {missing}, unexpected {extra})."
        )
    parts = []
    for key, reference in global_state.items():
        value = update.delta[key]
        if tuple(value.shape) != tuple(reference.shape):
            raise ValueError(
                f"Hospital {update.hospital!r}: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(reference.shape)}."
            )
        parts.append(value.detach().reshape(-1).to(torch.float64).numpy())
    return np.concatenate(parts)


def unflatten_delta(flat: np.ndarray, global_state: State) -> dict[str, torch.Tensor]:
    """Split a flat vector into tensors shaped like `global_state`, in its key order.

    The inverse of `flatten_delta`: the tensors take the global state's dtypes.

    Raises:
        ValueError: if the vector's length differs from the state's size.
    """
    flat = np.asarray(flat, dtype=np.float64).reshape(-1)
    size = sum(value.numel() for value in global_state.values())
    if len(flat) != size:
        raise ValueError(
            f"The vector has {len(flat)} values, but the state has {size}."
        )
    tensors, offset = {}, 0
    for key, value in global_state.items():
        part = flat[offset : offset + value.numel()].copy()
        tensors[key] = torch.from_numpy(part).reshape(value.shape).to(value.dtype)
        offset += value.numel()
    return tensors


def plain_weighted_sum(
    global_state: State, updates: Sequence[Update]
) -> tuple[np.ndarray, int]:
    """Return sum_k n_k * delta_k (flat float64) and sum_k n_k, computed in the clear.

    This is what plain federated averaging computes, for comparison with a
    RoundReport's `weighted_sum` and `total_weight`.
    """
    updates = list(updates)
    if not updates:
        raise ValueError("There are no updates to add.")
    total = sum(
        update.n_samples * flatten_delta(update, global_state) for update in updates
    )
    return total, sum(update.n_samples for update in updates)


def _session_of(round_number: int) -> str:
    return f"round {round_number}"


def _apply_mean(global_state: State, mean: np.ndarray, server_lr: float) -> State:
    steps = unflatten_delta(mean, {k: v.double() for k, v in global_state.items()})
    new_state = {}
    for key, value in global_state.items():
        moved = value.to(torch.float64) + server_lr * steps[key]
        if not torch.is_floating_point(value):
            moved = moved.round()
        new_state[key] = moved.to(value.dtype)
    return new_state
