"""Checkers for the secure-aggregation notebook's exercises: call one on your answer.

Like `helpers.exercises`, each checker computes the right answer itself, from
test cases of its own or from the values it is given, prints a short verdict
and returns True or False. None stores an answer.
"""

from __future__ import annotations

from collections.abc import Callable

from helpers.crypto import RandomSource
from helpers.exercises import verdict
from helpers.fixed_point import FixedPoint, check_int_setting
from helpers.secret_sharing import shamir_split


def check_additive_shares(function: Callable[[int, int, int], list[int]]) -> bool:
    """Run a learner's additive sharing on small cases.

    `function(value, n_shares, modulus)` must return `n_shares` integers in
    [0, modulus) that add up to `value` modulo `modulus`, and the shares must
    be random: sharing the same value twice gives different shares, and the
    first share takes many different values over repeated calls.
    """
    cases = [(0, 2, 16), (5, 3, 16), (15, 4, 16), (123_456, 5, 2**32)]
    for value, n_shares, modulus in cases:
        shares = [int(s) for s in function(value, n_shares, modulus)]
        if len(shares) != n_shares:
            return verdict(
                False, f"sharing into {n_shares} shares returned {len(shares)}."
            )
        if any(not 0 <= s < modulus for s in shares):
            return verdict(
                False, f"every share must lie in [0, {modulus}), got {shares}."
            )
        if sum(shares) % modulus != value % modulus:
            return verdict(
                False,
                f"the shares {shares} add up to {sum(shares) % modulus} modulo "
                f"{modulus}, not to {value}.",
            )

    firsts = {int(function(3, 3, 16)[0]) for _ in range(200)}
    if len(firsts) < 12:
        return verdict(
            False,
            "the first share took only "
            f"{len(firsts)} of 16 possible values in 200 calls: draw all but the "
            "last share uniformly at random, and let the last one make up the sum.",
        )
    return verdict(True, "the shares are random and add up to the value.")


def check_shamir_reconstruct(function: Callable[[list, int], int]) -> bool:
    """Run a learner's Shamir reconstruction on shares of known secrets.

    `function(shares, prime)` gets a list of (x, y) pairs, exactly as many as
    the threshold, and must return the secret f(0) modulo `prime`.
    """
    rng = RandomSource(2024, warn=False)
    for prime, threshold, n_shares in [(13, 2, 3), (101, 3, 5), (2**61 - 1, 4, 6)]:
        for secret in (0, 1, prime - 1, prime // 3):
            shares = shamir_split(
                secret, threshold=threshold, n_shares=n_shares, rng=rng, prime=prime
            )
            chosen = shares[n_shares - threshold :]
            got = function(chosen, prime)
            if got is None or int(got) % prime != secret:
                return verdict(
                    False,
                    f"from the shares {chosen} (prime {prime}) the secret is "
                    f"{secret}, your function returned {got}. Evaluate the "
                    "Lagrange polynomial at x = 0, dividing with pow(d, -1, prime).",
                )
    return verdict(True, "Lagrange interpolation at 0 recovers every secret.")


def check_ring_bits(
    *,
    n_hospitals: int,
    max_update_norm: float,
    max_weight: int,
    precision_bits: int,
    answer: int,
) -> bool:
    """Check the smallest ring size, in bits, that a secure sum needs.

    One hospital's weighted value is at most max_weight * max_update_norm in
    magnitude. The sum of n_hospitals of them, in fixed point with
    `precision_bits`, must fit the signed range of the ring.
    """
    encoding = FixedPoint(
        precision_bits=precision_bits,
        max_abs=max_weight * max_update_norm,
        n_summands=n_hospitals,
    )
    expected = encoding.required_ring_bits
    if answer == expected:
        return verdict(
            True,
            f"the sum reaches {n_hospitals} x {encoding.max_integer} in magnitude, "
            f"which needs {expected - 1} bits plus a sign bit.",
        )
    single = FixedPoint(
        precision_bits=precision_bits,
        max_abs=max_weight * max_update_norm,
        n_summands=1,
    ).required_ring_bits
    if answer == expected - 1:
        return verdict(False, "negative sums need one more bit, for the sign.")
    if answer == single:
        return verdict(
            False,
            "that ring holds one hospital's value, but not the sum of all of them.",
        )
    return verdict(
        False,
        "bound the sum: n_hospitals * round(max_weight * max_update_norm * "
        "2^precision_bits), count its bits, and add one for the sign.",
    )


def check_dropout_tolerance(
    *, n_hospitals: int, threshold: int, max_dropouts: int, colluders: int
) -> bool:
    """Check how many dropouts a round survives and how many hospitals must collude.

    With threshold t, a round completes while at least t hospitals respond,
    and the server learns a single hospital's input only with the help of t
    other hospitals, which together hold t shares of its keys.

    Raises:
        TypeError: if `n_hospitals` or `threshold` is not an int.
        ValueError: if the threshold lies outside 2..n_hospitals.
    """
    n_hospitals = check_int_setting(n_hospitals, "n_hospitals", minimum=2)
    threshold = check_int_setting(threshold, "threshold")
    if not 2 <= threshold <= n_hospitals:
        raise ValueError(
            f"threshold must lie in 2..n_hospitals, got {threshold} for {n_hospitals}."
        )
    dropouts_ok = max_dropouts == n_hospitals - threshold
    colluders_ok = colluders == threshold
    if dropouts_ok and colluders_ok:
        return verdict(
            True,
            f"up to {n_hospitals - threshold} hospitals may drop out, and "
            f"{threshold} colluding hospitals could help the server unmask one.",
        )
    if not dropouts_ok:
        return verdict(
            False, "the round completes as long as t hospitals remain to answer."
        )
    return verdict(
        False,
        "unmasking one hospital needs both of its secrets, and each needs t shares.",
    )
