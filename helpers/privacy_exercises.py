"""Checkers for the differential-privacy notebook's exercises: call one on your answer.

Like `helpers.exercises`, each checker computes the right answer itself, from
test cases of its own or from the values it is given, prints a short verdict and
returns True or False. None stores an answer. Every epsilon comes from Opacus's
RDP accountant, as in `helpers.privacy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from helpers.exercises import verdict
from helpers.privacy import epsilon_spent, group_epsilon_delta

_TOLERANCE = 1e-6

# Cases of (noise_multiplier, sample_rate, steps_per_round, rounds, delta).
_ACCOUNTING_CASES = [
    (1.0, 0.1, 10, 5, 1e-5),
    (0.8, 1 / 14, 14, 3, 1e-5),
    (2.0, 0.5, 2, 8, 1e-3),
]

# check_affordable_rounds gives up on budgets that last longer than this.
_MAX_ROUNDS = 100_000

# The direction epsilon moves in when each lever is increased, all else fixed.
_LEVER_DIRECTIONS = {
    "noise_multiplier": "down",
    "sample_rate": "up",
    "rounds": "up",
    "max_grad_norm": "same",
    "delta": "down",
}


def check_epsilon_over_rounds(function: Callable[..., float]) -> bool:
    """Run a learner's accountant over several runs and compare with RDP's result.

    `function(noise_multiplier=, sample_rate=, steps_per_round=, rounds=,
    delta=)` must return the epsilon after all rounds, from one RDP accountant
    that composes every step of every round.
    """
    for noise, rate, per_round, rounds, delta in _ACCOUNTING_CASES:
        expected = epsilon_spent(
            noise_multiplier=noise,
            sample_rate=rate,
            steps=per_round * rounds,
            delta=delta,
        )
        got = function(
            noise_multiplier=noise,
            sample_rate=rate,
            steps_per_round=per_round,
            rounds=rounds,
            delta=delta,
        )
        if got is not None and abs(float(got) - expected) <= _TOLERANCE * expected:
            continue
        one_round = epsilon_spent(
            noise_multiplier=noise, sample_rate=rate, steps=per_round, delta=delta
        )
        hint = (
            "that is the epsilon of one round: the accountant was reset. Keep one "
            "accountant and step it for every round."
            if got is not None and abs(float(got) - one_round) <= _TOLERANCE
            else "step one RDPAccountant steps_per_round * rounds times, then call "
            "get_epsilon(delta)."
        )
        return verdict(
            False,
            f"for noise_multiplier={noise}, sample_rate={rate:.4g}, "
            f"{per_round} steps per round, {rounds} rounds, delta={delta:g} the "
            f"epsilon is {expected:.4f}, yours is {got}: {hint}",
        )
    return verdict(True, "your accountant composes every round, never resetting.")


def check_affordable_rounds(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps_per_round: int,
    target_epsilon: float,
    delta: float,
    answer: int,
) -> bool:
    """Check the most rounds a hospital can take without exceeding its budget."""

    def fits(rounds: int) -> bool:
        spent = epsilon_spent(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=rounds * steps_per_round,
            delta=delta,
        )
        return spent <= target_epsilon

    # Epsilon grows with the number of steps, so double, then bisect.
    high = 1
    while fits(high):
        high *= 2
        if high > _MAX_ROUNDS:
            raise ValueError(
                f"More than {_MAX_ROUNDS} rounds fit this budget; choose settings "
                "whose budget runs out."
            )
    rounds = high // 2
    while high - rounds > 1:
        middle = (rounds + high) // 2
        rounds, high = (middle, high) if fits(middle) else (rounds, middle)
    spent = epsilon_spent(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=rounds * steps_per_round,
        delta=delta,
    )
    if answer == rounds:
        return verdict(
            True,
            f"{rounds} rounds spend epsilon={spent:.3f}; one more would exceed "
            f"{target_epsilon:g}.",
        )
    direction = "fewer" if answer > rounds else "more"
    return verdict(
        False,
        f"try {direction} rounds: compute epsilon after k * steps_per_round steps "
        "and find the largest k that stays within the target.",
    )


def check_levers(answers: Mapping[str, str]) -> bool:
    """Check which way epsilon moves when each lever is increased.

    `answers` maps each of "noise_multiplier", "sample_rate", "rounds",
    "max_grad_norm" and "delta" to "up", "down" or "same".
    """
    missing = sorted(set(_LEVER_DIRECTIONS) - set(answers))
    if missing:
        return verdict(False, f"give a direction for {missing} too.")
    wrong = [
        lever
        for lever, direction in _LEVER_DIRECTIONS.items()
        if str(answers[lever]).lower() != direction
    ]
    if wrong:
        hint = ""
        if "max_grad_norm" in wrong:
            hint = (
                " The noise is noise_multiplier * max_grad_norm, so the clipping "
                "bound cancels out of epsilon; it changes accuracy, not privacy."
            )
        return verdict(False, f"look again at {wrong}.{hint}")
    return verdict(
        True,
        "more noise and a larger delta lower epsilon; a higher sample rate and "
        "more rounds raise it; the clipping bound leaves it unchanged.",
    )


def check_lesion_guarantee(
    *,
    epsilon: float,
    delta: float,
    images_per_lesion: int,
    answer: tuple[float, float],
) -> bool:
    """Check the (epsilon, delta) of a lesion by the textbook group-privacy rule."""
    expected_epsilon, expected_delta = group_epsilon_delta(
        epsilon, delta, images_per_lesion
    )
    got_epsilon, got_delta = (float(value) for value in answer)
    epsilon_ok = math.isclose(got_epsilon, expected_epsilon, rel_tol=1e-6)
    delta_ok = math.isclose(got_delta, expected_delta, rel_tol=1e-6)
    if epsilon_ok and delta_ok:
        return verdict(
            True,
            f"a lesion of {images_per_lesion} images gets epsilon="
            f"{expected_epsilon:g} and delta={expected_delta:.3g}.",
        )
    if not epsilon_ok:
        return verdict(False, "epsilon grows by the number of images: k * epsilon.")
    return verdict(False, "delta becomes k * e^((k - 1) * epsilon) * delta.")
