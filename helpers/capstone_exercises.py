"""Checkers for the capstone notebook's exercises: call one on your answer.

Like `helpers.exercises`, each checker computes the right answer itself, from
test cases of its own or from the values it is given, prints a short verdict
and returns True or False. None stores an answer except `check_what_protects`,
whose answer is a fact about the notebook's setting. Noise is in quanta, as in
`helpers.distributed_noise`, and every epsilon comes from Opacus's RDP
accountant, as in `helpers.privacy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from helpers.distributed_noise import noise_std_after_dropouts
from helpers.exercises import verdict
from helpers.fixed_point import check_float_setting, check_int_setting
from helpers.privacy import epsilon_spent

# Relative tolerance on a learner's variance or noise ratio: three significant
# figures pass.
_TOLERANCE = 5e-3
# Relative tolerance on a learner's epsilon: two RDP accountants agree closely.
_EPSILON_TOLERANCE = 1e-6
# An epsilon this far below the right one counted too little privacy loss.
_SHORTFALL = 0.01

# Cases of (noise_multiplier, rounds, delta) for check_epsilon_without_sampling.
_NO_SAMPLING_CASES = [(1.0, 1, 1e-5), (2.3, 20, 1e-3), (5.0, 50, 1e-5)]

DEFENCES = ("differential privacy", "secure aggregation")

# Each exposure in the capstone notebook's setting: the defences that protect it,
# and the reason that a wrong answer gets as its hint.
_PROTECTIONS: dict[str, tuple[frozenset[str], str]] = {
    "one hospital's update, read by the server": (
        frozenset({"differential privacy", "secure aggregation"}),
        "ask what the server receives from one hospital under masking, and "
        "whether the hospital's training added noise before anything left it.",
    ),
    "the sum of the updates, read by the server": (
        frozenset({"differential privacy"}),
        "ask what unmasking gives the server at the end of a round, and what was "
        "added to the updates before they were masked.",
    ),
    "membership of an image, read off the released model": (
        frozenset({"differential privacy"}),
        "ask whether masking changes the model that the server computes and "
        "releases, and what a guarantee per image covers.",
    ),
    "the training-set sizes and label histograms a hospital publishes": (
        frozenset(),
        "ask whether these counts pass through training, noise or the protocol at all.",
    ),
}
EXPOSURES = tuple(_PROTECTIONS)

# Hint for a wrong set of defences, keyed by (credits an extra one, leaves one out).
_MISMATCHES = {
    (True, False): "you credit a defence that does not act here",
    (False, True): "a defence you left out also acts here",
    (True, True): "you credit a defence that does not act here and leave out one "
    "that does",
}


def check_hospital_variance(*, total_sigma: float, threshold: int, answer) -> bool:
    """Check each hospital's noise variance for distributed discrete Gaussian noise.

    Each hospital adds noise of variance v, in quanta squared, so that the noise
    of any `threshold` hospitals alone has variance total_sigma^2. Answers
    within 0.5% pass, so three significant figures do.

    Raises:
        TypeError: if a setting or the answer is not a number.
        ValueError: if total_sigma is not positive or threshold is below 1.
    """
    total_sigma = check_float_setting(total_sigma, "total_sigma")
    threshold = check_int_setting(threshold, "threshold", minimum=1)
    got = _real_answer(answer, "answer")

    exact = total_sigma**2 / threshold
    if _close(got, exact):
        return verdict(
            True,
            f"{threshold} hospitals of variance {exact:.4g} add up to variance "
            f"{total_sigma**2:.4g}, a standard deviation of {total_sigma:g} quanta.",
        )

    if got <= 0:
        return verdict(
            False, "a variance is positive: each hospital adds some noise of its own."
        )
    if _close(got, total_sigma / threshold):
        return verdict(
            False,
            "you divided the standard deviation. Independent noises add their "
            "variances, not their standard deviations.",
        )
    if _close(got, total_sigma / math.sqrt(threshold)):
        return verdict(
            False,
            "that is each hospital's standard deviation. The question asks for its "
            "variance, in quanta squared.",
        )
    if got < exact:
        return verdict(
            False,
            "too little noise. Colluding hospitals can subtract their own parts: "
            "how few honest parts may the sum keep, and what must they add up to?",
        )
    if threshold > 1 and _close(got, total_sigma**2):
        return verdict(
            False,
            "that is the variance of the whole noise. Each hospital adds one part "
            "of it.",
        )
    return verdict(
        False,
        "more noise than needed. Which number of hospitals does the guarantee rest "
        "on, and what must their parts add up to?",
    )


def check_noise_left(
    *, n_hospitals: int, threshold: int, dropped: int, colluding: int, answer
) -> bool:
    """Check how much noise the server cannot remove after dropouts and collusion.

    Every hospital adds variance sigma^2 / threshold. `dropped` hospitals drop out
    before their masked input arrives, so their noise is missing from the sum,
    and `colluding` surviving hospitals tell the server their own noise. `answer`
    is a pair (ratio, target_met): the standard deviation of the noise left,
    divided by sigma, and whether that noise still reaches the target sigma.

    Raises:
        TypeError: if a count is not an int, the answer is not a pair, its ratio
            is not a number or its target_met is not a bool.
        ValueError: on negative counts, a threshold outside 1..n_hospitals, more
            colluding hospitals than survivors, or fewer survivors than the
            threshold, when the round fails and returns no sum at all.
    """
    n_hospitals = check_int_setting(n_hospitals, "n_hospitals", minimum=1)
    threshold = check_int_setting(threshold, "threshold", minimum=1)
    dropped = check_int_setting(dropped, "dropped", minimum=0)
    colluding = check_int_setting(colluding, "colluding", minimum=0)
    if threshold > n_hospitals:
        raise ValueError(
            f"threshold must lie in 1..n_hospitals, got {threshold} for "
            f"{n_hospitals} hospitals."
        )
    if dropped > n_hospitals:
        raise ValueError(
            f"dropped must be at most the {n_hospitals} hospitals, got {dropped}."
        )
    survivors = n_hospitals - dropped
    if survivors < threshold:
        raise ValueError(
            f"{_count(dropped, 'dropout')} leave {survivors} of "
            f"{_count(n_hospitals, 'hospital')}, fewer than the threshold "
            f"{threshold}: the round fails and the server gets no sum at all, so "
            "there is no noise to measure. Choose fewer dropouts."
        )
    if colluding > survivors:
        raise ValueError(
            f"colluding counts surviving hospitals, so it must be at most the "
            f"{survivors} survivors, got {colluding}."
        )
    ratio, target_met = _ratio_and_flag(answer)

    # With sigma = 1 each hospital's variance is 1 / threshold, so the standard
    # deviation left is already the ratio to sigma.
    expected = noise_std_after_dropouts(
        1 / threshold, n_hospitals=n_hospitals, dropped=dropped, colluding=colluding
    )
    honest = survivors - colluding
    expected_met = honest >= threshold
    if _close(ratio, expected) and target_met == expected_met:
        met = "still meets" if expected_met else "falls short of"
        return verdict(
            True,
            f"{honest} honest parts leave {expected:.3f} sigma, which {met} the "
            "target.",
        )

    if not _close(ratio, expected):
        return verdict(
            False, _ratio_hint(ratio, n_hospitals, threshold, dropped, colluding)
        )
    return verdict(
        False,
        "the target is met when the noise left is at least sigma: compare your "
        "ratio with 1.",
    )


def check_epsilon_without_sampling(function: Callable[..., float]) -> bool:
    """Run a learner's accountant on rounds whose participants the server learns.

    `function(noise_multiplier=, rounds=, delta=)` must return the epsilon of a
    hospital after `rounds` Gaussian mechanisms at sample rate 1: the server
    learns which hospitals took part, so sampling gives no amplification. The
    reference is `helpers.privacy.epsilon_spent` with sample_rate=1.0 and one
    step per round. An exception raised by `function` is reported, not raised.
    """
    for noise, rounds, delta in _NO_SAMPLING_CASES:
        expected = epsilon_spent(
            noise_multiplier=noise, sample_rate=1.0, steps=rounds, delta=delta
        )
        case = f"for noise_multiplier={noise}, rounds={rounds}, delta={delta:g}"
        # Any exception comes from the learner's code, so it becomes a verdict.
        try:
            got = function(noise_multiplier=noise, rounds=rounds, delta=delta)
        except Exception as error:
            return verdict(
                False,
                f"{case} your function raised {type(error).__name__}: {error}",
            )
        is_real = isinstance(got, int | float | np.integer | np.floating)
        if isinstance(got, bool | np.bool_) or not is_real:
            return verdict(
                False,
                f"{case} your function returned {got!r}. Return epsilon as one "
                "number: get_epsilon returns it alone, but get_privacy_spent "
                "returns a pair.",
            )
        got = float(got)
        if math.isclose(got, expected, rel_tol=_EPSILON_TOLERANCE):
            continue
        if not got >= 0:
            return verdict(
                False,
                f"{case} your function returned {got!r}. Epsilon is a number >= 0.",
            )

        one_round = epsilon_spent(
            noise_multiplier=noise, sample_rate=1.0, steps=1, delta=delta
        )
        if rounds > 1 and math.isclose(got, one_round, rel_tol=_EPSILON_TOLERANCE):
            hint = (
                "that is the epsilon of a single round. Step one accountant once "
                "for every round."
            )
        elif got < expected * (1 - _SHORTFALL):
            hint = (
                "your epsilon is too small. Check that every round is counted, "
                "at sample_rate=1.0 (the server sees which hospitals took part, "
                "so sampling amplifies nothing), with the RDP accountant."
            )
        else:
            hint = (
                "step one RDPAccountant once per round with sample_rate=1.0, then "
                "call get_epsilon(delta)."
            )
        return verdict(False, f"{case} your epsilon is {got:.4f}: {hint}")
    return verdict(
        True,
        "your accountant counts every round at sample rate 1, with no "
        "amplification by sampling.",
    )


def check_what_protects(answer: Mapping[str, Any]) -> bool:
    """Check which defences protect each exposure in the capstone's setting.

    `answer` maps each name in `EXPOSURES` to a set, list or tuple of the
    defences in `DEFENCES` that protect it. An empty one means that neither
    does. Names are compared without case or surrounding spaces.

    Raises:
        TypeError: if `answer` is not a mapping or a value is not a collection.
        ValueError: on an unknown exposure, an exposure given twice or an
            unknown defence name.
    """
    if not isinstance(answer, Mapping):
        raise TypeError(
            f"answer must be a dict from exposure to defences, got "
            f"{type(answer).__name__}."
        )
    chosen = {}
    for key, value in answer.items():
        exposure = _normalise(key, "exposure", EXPOSURES)
        if exposure in chosen:
            raise ValueError(f"the exposure {exposure!r} is given twice.")
        chosen[exposure] = _defence_set(exposure, value)

    missing = [exposure for exposure in EXPOSURES if exposure not in chosen]
    if missing:
        return verdict(False, f"give the defences of {missing} too.")

    hints = []
    for exposure, (expected, reason) in _PROTECTIONS.items():
        if chosen[exposure] == expected:
            continue
        credited = bool(chosen[exposure] - expected)
        left_out = bool(expected - chosen[exposure])
        mismatch = _MISMATCHES[credited, left_out]
        hints.append(f"\n  {exposure!r}: {mismatch}. To decide, {reason}")
    if hints:
        return verdict(False, "look again at" + "".join(hints))
    return verdict(
        True,
        "masks hide single updates, noise bounds what the sum and the model "
        "reveal, and nothing protects what a hospital publishes itself.",
    )


def _close(value: float, expected: float) -> bool:
    return math.isclose(value, expected, rel_tol=_TOLERANCE)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _real_answer(value: Any, name: str) -> float:
    is_real = isinstance(value, int | float | Fraction | np.integer | np.floating)
    if isinstance(value, bool | np.bool_) or not is_real:
        raise TypeError(
            f"{name} must be a number, got {value!r} of type {type(value).__name__}."
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return number


def _ratio_and_flag(answer: Any) -> tuple[float, bool]:
    if isinstance(answer, str) or not isinstance(answer, Sequence) or len(answer) != 2:
        raise TypeError(f"answer must be a pair (ratio, target_met), got {answer!r}.")
    ratio, target_met = answer
    ratio = _real_answer(ratio, "ratio")
    if not isinstance(target_met, bool | np.bool_):
        raise TypeError(
            f"target_met must be a bool, True or False, got {target_met!r} of type "
            f"{type(target_met).__name__}."
        )
    return ratio, bool(target_met)


def _ratio_hint(
    ratio: float, n_hospitals: int, threshold: int, dropped: int, colluding: int
) -> str:
    honest = n_hospitals - dropped - colluding
    if _close(ratio, honest / threshold):
        return (
            "that is the ratio of the variances. The standard deviation is the "
            "square root of the variance."
        )
    # With no dropouts or no colluders, two of these cases coincide, and the
    # first one names the mistake.
    if _close(ratio, math.sqrt((n_hospitals - dropped) / threshold)):
        return "colluding hospitals tell the server their noise, so it can subtract it."
    if _close(ratio, math.sqrt((n_hospitals - colluding) / threshold)):
        return (
            "a hospital that drops out before sending leaves its noise out of the sum."
        )
    if _close(ratio, math.sqrt(n_hospitals / threshold)):
        return (
            "that counts every hospital's noise. Dropped hospitals never sent "
            "theirs, and colluding ones can subtract theirs."
        )
    return (
        "count the hospitals whose noise is in the sum and secret from the server; "
        "their variances add up."
    )


def _normalise(name: Any, kind: str, valid: Sequence[str]) -> str:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in valid:
        raise ValueError(f"Unknown {kind} {name!r}. Use one of {list(valid)}.")
    return key


def _defence_set(exposure: str, value: Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, set | frozenset | list | tuple):
        raise TypeError(
            f"the defences of {exposure!r} must be a set, list or tuple of names "
            f"from {list(DEFENCES)}, got {value!r}."
        )
    return frozenset(_normalise(name, "defence", DEFENCES) for name in value)
