"""Additive secret sharing in a ring, and Shamir's t-of-n sharing over a prime field.

Additive sharing splits a value x into n shares that are uniformly random
except that they add up to x modulo the ring size. Any n - 1 of them are
independent of x, so a peer holding one share learns nothing, and only the sum
of all n shares gives x back. Because sharing is linear, adding shares from
several hospitals gives shares of the sum of their values.

Shamir's scheme (Shamir 1979, "How to Share a Secret") hides a secret s as
f(0) of a random polynomial f of degree t - 1 over the integers modulo a prime
p. Share i is (i, f(i)). Any t shares fix f, and so s, by Lagrange
interpolation. Any t - 1 shares are consistent with every possible secret,
each equally likely. Secure aggregation uses it so that t surviving hospitals
can recover a dropped hospital's masking key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from helpers.crypto import RandomSource
from helpers.fixed_point import FixedPoint, check_int_setting

# The Mersenne prime 2^521 - 1: every 32-byte key or seed is a field element.
SHAMIR_PRIME = (1 << 521) - 1

Share = tuple[int, int]


def additive_shares(
    encoded: np.ndarray, n_shares: int, *, encoding: FixedPoint, rng: RandomSource
) -> list[np.ndarray]:
    """Split ring elements into `n_shares` shares that add up to them.

    The first n - 1 shares are uniform ring elements drawn from `rng`, and the
    last is the value minus their sum, so all n add up to `encoded` modulo the
    ring size.

    Args:
        encoded: uint64 ring elements, for example from `FixedPoint.encode`.
        n_shares: number of shares, >= 2 (one per peer).
        encoding: the FixedPoint whose ring the shares live in.
        rng: the source of the random shares.

    Returns:
        `n_shares` uint64 arrays of the input's shape.

    Raises:
        TypeError: if `encoded` is not an integer array, or `n_shares` not an int.
        ValueError: if `n_shares` < 2, or a value of `encoded` is negative
            or outside the ring.
    """
    n_shares = check_int_setting(n_shares, "n_shares", minimum=2)
    encoded = encoding.check_in_ring(encoded, "encoded")

    random_shares = [
        _uniform_ring_elements(encoded.shape, encoding, rng)
        for _ in range(n_shares - 1)
    ]
    last = encoding.add(encoded, encoding.negate(encoding.add(*random_shares)))
    return [*random_shares, last]


def reconstruct_additive(
    shares: Sequence[np.ndarray], *, encoding: FixedPoint
) -> np.ndarray:
    """Add additive shares (or sums of shares) back into the value they share."""
    if len(shares) == 0:
        raise ValueError("There are no shares to add.")
    return encoding.add(*shares)


def shamir_split(
    secret: int,
    *,
    threshold: int,
    n_shares: int,
    rng: RandomSource,
    prime: int = SHAMIR_PRIME,
) -> list[Share]:
    """Split an integer secret into Shamir shares, any `threshold` of which recover it.

    The polynomial f(x) = secret + a_1 x + ... + a_{t-1} x^{t-1} (mod prime)
    has coefficients a_j uniform in [0, prime), drawn from `rng`.

    Args:
        secret: an integer in [0, prime): a Python int or a NumPy integer.
        threshold: t, the number of shares needed, 1 <= t <= n_shares.
        n_shares: n, the number of shares, all with distinct x in 1..n.
        rng: the source of the random coefficients.
        prime: the field's prime modulus, larger than n_shares.

    Returns:
        The shares (x, f(x)) for x = 1..n_shares.

    Raises:
        TypeError: if the secret is not an integer (a float or a bool), or a
            setting has the wrong type.
        ValueError: if the secret lies outside [0, prime), or the settings
            cannot work.
    """
    threshold, n_shares, prime = _check_threshold(threshold, n_shares, prime)
    # The messages leave the secret's value out: it is what sharing protects.
    if isinstance(secret, bool | np.bool_) or not isinstance(secret, int | np.integer):
        raise TypeError(
            f"secret must be an int (or a NumPy integer), got {type(secret).__name__}."
        )
    secret = int(secret)
    if not 0 <= secret < prime:
        got = "a negative value" if secret < 0 else f"{secret.bit_length()} bits"
        raise ValueError(
            "The secret must lie in [0, prime) to be a field element, got "
            f"{got} for a prime of {prime.bit_length()} bits."
        )

    coefficients = [secret] + [rng.below(prime) for _ in range(threshold - 1)]
    return [(x, _evaluate(coefficients, x, prime)) for x in range(1, n_shares + 1)]


def shamir_reconstruct(
    shares: Sequence[Share], *, threshold: int, prime: int = SHAMIR_PRIME
) -> int:
    """Recover a Shamir secret f(0) from at least `threshold` shares.

    Lagrange interpolation at 0 over the first `threshold` shares:
    f(0) = sum_i y_i * prod_{j != i} x_j / (x_j - x_i) (mod prime).

    Raises:
        TypeError: if `threshold` is not an int.
        ValueError: on a share that is not an (x, y) pair of ints, fewer than
            `threshold` shares (they are consistent with every secret, so any
            answer would be a guess), repeated or invalid x values, or values
            outside the field.
    """
    threshold = check_int_setting(threshold, "threshold", minimum=1)
    shares = [_check_share(share, index) for index, share in enumerate(shares)]
    if len(shares) < threshold:
        raise ValueError(
            f"Shamir reconstruction needs at least {threshold} shares, got "
            f"{len(shares)}. Fewer shares are consistent with every possible "
            "secret, so no answer is returned."
        )
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs):
        raise ValueError(f"Shares must have distinct x values, got {sorted(xs)}.")
    if any(not 0 < x < prime for x in xs) or any(not 0 <= y < prime for _, y in shares):
        raise ValueError(
            "Share x values must lie in [1, prime) and y values in [0, prime)."
        )

    chosen = shares[:threshold]
    secret = 0
    for i, (x_i, y_i) in enumerate(chosen):
        numerator, denominator = 1, 1
        for j, (x_j, _) in enumerate(chosen):
            if i != j:
                numerator = numerator * x_j % prime
                denominator = denominator * (x_j - x_i) % prime
        secret = (secret + y_i * numerator * pow(denominator, -1, prime)) % prime
    return secret


def _evaluate(coefficients: list[int], x: int, prime: int) -> int:
    # Horner's rule, from the highest coefficient down.
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % prime
    return value


def _check_share(share: Any, index: int) -> tuple[int, int]:
    # Floats would be truncated silently by int(), so only integers pass.
    # The message names types, not values, because y is secret.
    if not isinstance(share, tuple | list) or len(share) != 2:
        length = len(share) if isinstance(share, tuple | list) else None
        got = type(share).__name__
        if length is not None:
            got += f" of length {length}"
        raise ValueError(f"shares[{index}] must be an (x, y) pair of ints, got {got}.")
    for part, value in zip(("x", "y"), share, strict=True):
        if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | np.integer
        ):
            raise ValueError(
                f"shares[{index}] must be an (x, y) pair of ints, but its {part} is "
                f"a {type(value).__name__}."
            )
    return int(share[0]), int(share[1])


def _check_threshold(threshold: int, n_shares: int, prime: int) -> tuple[int, int, int]:
    threshold = check_int_setting(threshold, "threshold", minimum=1)
    n_shares = check_int_setting(n_shares, "n_shares", minimum=1)
    prime = check_int_setting(prime, "prime", minimum=2)
    if threshold > n_shares:
        raise ValueError(
            f"threshold {threshold} exceeds n_shares {n_shares}: the secret could "
            "never be recovered."
        )
    if n_shares >= prime:
        raise ValueError(
            f"n_shares {n_shares} needs distinct nonzero x values below the prime "
            f"{prime}."
        )
    return threshold, n_shares, prime


def _uniform_ring_elements(
    shape: tuple[int, ...], encoding: FixedPoint, rng: RandomSource
) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    words = np.frombuffer(rng.bytes(8 * count), dtype="<u8").astype(np.uint64)
    return encoding.reduce(words.reshape(shape))
