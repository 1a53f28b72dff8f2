"""Tests for additive secret sharing and Shamir's t-of-n sharing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from helpers.crypto import RandomSource
from helpers.fixed_point import FixedPoint
from helpers.secret_sharing import (
    SHAMIR_PRIME,
    additive_shares,
    reconstruct_additive,
    shamir_reconstruct,
    shamir_split,
)
from helpers.secure_aggregation import uniformity_pvalue


@pytest.fixture
def rng():
    return RandomSource(7, warn=False)


def test_additive_shares_sum_to_value(rng):
    encoding = FixedPoint(precision_bits=8, max_abs=4.0, n_summands=5)
    encoded = encoding.encode(np.array([-4.0, 1.5, 0.0, 3.25]))

    shares = additive_shares(encoded, 5, encoding=encoding, rng=rng)

    assert len(shares) == 5
    assert all(share.shape == (4,) for share in shares)
    total = reconstruct_additive(shares, encoding=encoding)
    assert np.array_equal(encoding.decode(total), [-4.0, 1.5, 0.0, 3.25])
    partial = reconstruct_additive(shares[:4], encoding=encoding)
    assert not np.array_equal(partial, encoded)


def test_additive_shares_of_sum_are_sums_of_shares(rng):
    encoding = FixedPoint(precision_bits=4, max_abs=2.0, n_summands=3)
    values = [np.array([1.0, -2.0]), np.array([-0.5, 2.0]), np.array([2.0, 0.25])]
    shared = [
        additive_shares(encoding.encode(v), 3, encoding=encoding, rng=rng)
        for v in values
    ]

    # Peer j adds the j-th share of every hospital; the server adds the peers.
    peer_sums = [encoding.add(*(s[j] for s in shared)) for j in range(3)]
    total = reconstruct_additive(peer_sums, encoding=encoding)

    assert np.array_equal(encoding.decode(total), [2.5, 0.25])


def test_single_additive_share_is_uniform(rng):
    encoding = FixedPoint(precision_bits=20, max_abs=1.0, n_summands=3)
    constant = encoding.encode(np.full(4096, 0.75))

    share = additive_shares(constant, 3, encoding=encoding, rng=rng)[0]

    assert uniformity_pvalue(share, ring_bits=encoding.ring_bits) > 1e-3
    assert uniformity_pvalue(constant, ring_bits=encoding.ring_bits) < 1e-6


def test_additive_shares_rejects_one_share(rng):
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=2)

    with pytest.raises(ValueError, match="n_shares"):
        additive_shares(encoding.encode([1.0]), 1, encoding=encoding, rng=rng)
    with pytest.raises(ValueError, match="no shares"):
        reconstruct_additive([], encoding=encoding)


def test_shamir_any_threshold_subset_recovers(rng):
    secret = 2**255 + 12345
    shares = shamir_split(secret, threshold=3, n_shares=5, rng=rng)

    assert [x for x, _ in shares] == [1, 2, 3, 4, 5]
    for subset in itertools.combinations(shares, 3):
        assert shamir_reconstruct(subset, threshold=3) == secret
    assert shamir_reconstruct(shares, threshold=3) == secret


def test_shamir_fewer_than_threshold_refuses(rng):
    shares = shamir_split(99, threshold=3, n_shares=5, rng=rng)

    with pytest.raises(ValueError, match="at least 3 shares, got 2"):
        shamir_reconstruct(shares[:2], threshold=3)


def test_shamir_threshold_minus_one_shares_fit_every_secret():
    # In GF(7) with t = 3: for any 2 share positions, each pair of share values
    # arises from exactly one polynomial per secret, so the shares are
    # uniformly distributed whatever the secret is.
    prime, threshold = 7, 3
    for positions in itertools.combinations(range(1, prime), threshold - 1):
        for secret in range(prime):
            seen = {}
            for coefficients in itertools.product(range(prime), repeat=threshold - 1):
                values = tuple(
                    (secret + sum(c * x ** (j + 1) for j, c in enumerate(coefficients)))
                    % prime
                    for x in positions
                )
                seen[values] = seen.get(values, 0) + 1
            assert len(seen) == prime ** (threshold - 1)
            assert set(seen.values()) == {1}


def test_shamir_small_field_matches_exhaustive_interpolation():
    prime = 11
    rng = RandomSource(3, warn=False)
    for secret in range(prime):
        shares = shamir_split(secret, threshold=2, n_shares=4, rng=rng, prime=prime)
        for subset in itertools.permutations(shares, 2):
            assert shamir_reconstruct(subset, threshold=2, prime=prime) == secret


def test_shamir_invalid_inputs(rng):
    with pytest.raises(ValueError, match="exceeds n_shares"):
        shamir_split(1, threshold=4, n_shares=3, rng=rng)
    with pytest.raises(ValueError, match="field element"):
        shamir_split(SHAMIR_PRIME, threshold=2, n_shares=3, rng=rng)
    with pytest.raises(ValueError, match="below the prime"):
        shamir_split(1, threshold=2, n_shares=7, rng=rng, prime=7)
    shares = shamir_split(5, threshold=2, n_shares=3, rng=rng)
    with pytest.raises(ValueError, match="distinct x"):
        shamir_reconstruct([shares[0], shares[0]], threshold=2)
    with pytest.raises(ValueError, match="threshold"):
        shamir_reconstruct(shares, threshold=0)


def test_shamir_split_rejects_non_integer_secrets(rng):
    for secret in (7.5, 7.0, True, np.bool_(True), "7"):
        with pytest.raises(TypeError, match="secret must be an int"):
            shamir_split(secret, threshold=2, n_shares=3, rng=rng)


def test_shamir_split_accepts_numpy_integers(rng):
    shares = shamir_split(
        np.int64(7), threshold=np.int64(2), n_shares=np.int32(3), rng=rng
    )

    assert [x for x, _ in shares] == [1, 2, 3]
    assert all(type(y) is int for _, y in shares)
    assert shamir_reconstruct(shares[1:], threshold=np.int64(2)) == 7
    with pytest.raises(TypeError, match="threshold must be an int"):
        shamir_split(7, threshold=True, n_shares=3, rng=rng)
    with pytest.raises(TypeError, match="n_shares must be an int"):
        shamir_split(7, threshold=2, n_shares=3.0, rng=rng)


def test_shamir_split_error_hides_secret(rng):
    secret = SHAMIR_PRIME + 123456789

    with pytest.raises(ValueError, match="got 522 bits for a prime of 521") as caught:
        shamir_split(secret, threshold=2, n_shares=3, rng=rng)
    assert str(secret) not in str(caught.value)
    with pytest.raises(ValueError, match="got a negative value"):
        shamir_split(-1, threshold=2, n_shares=3, rng=rng)


@pytest.mark.parametrize(
    "shares, message",
    [
        (
            [(1.7, 5), (2, 6)],
            "shares\\[0\\] must be an \\(x, y\\) pair of ints, but its x is a float",
        ),
        ([(1, 5), (2, 6.0)], "shares\\[1\\] .* but its y is a float"),
        ([(True, 5), (2, 6)], "shares\\[0\\] .* but its x is a bool"),
        (
            [(1,)],
            "shares\\[0\\] must be an \\(x, y\\) pair of ints, got tuple of length 1",
        ),
        ([(1, 2, 3), (2, 3)], "got tuple of length 3"),
        ([5, (2, 3)], "shares\\[0\\] .* got int"),
        ([(1, "5"), (2, 3)], "its y is a str"),
    ],
)
def test_shamir_reconstruct_rejects_malformed_shares(shares, message):
    with pytest.raises(ValueError, match=message):
        shamir_reconstruct(shares, threshold=len(shares))


def test_shamir_reconstruct_accepts_numpy_and_list_shares():
    rng = RandomSource(5, warn=False)
    shares = shamir_split(40, threshold=2, n_shares=3, rng=rng, prime=101)
    as_numpy = [[np.int64(x), np.int64(y)] for x, y in shares]

    assert shamir_reconstruct(as_numpy, threshold=2, prime=101) == 40
    with pytest.raises(TypeError, match="threshold must be an int"):
        shamir_reconstruct(shares, threshold=2.0, prime=101)


def test_additive_shares_accepts_numpy_count(rng):
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=3)
    encoded = encoding.encode([0.5, -1.0])

    shares = additive_shares(encoded, np.int64(3), encoding=encoding, rng=rng)

    assert len(shares) == 3
    total = reconstruct_additive(shares, encoding=encoding)
    assert encoding.decode(total).tolist() == [0.5, -1.0]
    with pytest.raises(TypeError, match="n_shares must be an int"):
        additive_shares(encoded, True, encoding=encoding, rng=rng)


def test_additive_shares_rejects_non_ring_input(rng):
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=3)

    with pytest.raises(TypeError, match="encoded must be unsigned integers"):
        additive_shares(np.array([0.5]), 3, encoding=encoding, rng=rng)
    with pytest.raises(ValueError, match="encoded must lie in .* negative value -1"):
        additive_shares(np.array([-1]), 3, encoding=encoding, rng=rng)
    with pytest.raises(ValueError, match="encoded contain 256, outside the 7-bit"):
        additive_shares(np.array([256], dtype=np.uint64), 3, encoding=encoding, rng=rng)
