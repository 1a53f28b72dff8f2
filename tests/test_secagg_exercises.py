"""Tests for the secure-aggregation notebook's checkers: right solutions pass."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from helpers import secagg_exercises


def reference_shares(value, n_shares, modulus):
    shares = [secrets.randbelow(modulus) for _ in range(n_shares - 1)]
    return [*shares, (value - sum(shares)) % modulus]


def reference_reconstruct(shares, prime):
    secret = 0
    for i, (x_i, y_i) in enumerate(shares):
        numerator, denominator = 1, 1
        for j, (x_j, _) in enumerate(shares):
            if i != j:
                numerator = numerator * x_j % prime
                denominator = denominator * (x_j - x_i) % prime
        secret += y_i * numerator * pow(denominator, -1, prime)
    return secret % prime


def test_additive_shares_reference_passes(capsys):
    assert secagg_exercises.check_additive_shares(reference_shares)
    assert capsys.readouterr().out.startswith("Correct:")


def test_additive_shares_constant_fails(capsys):
    def not_random(value, n_shares, modulus):
        return [0] * (n_shares - 1) + [value % modulus]

    assert not secagg_exercises.check_additive_shares(not_random)
    assert "uniformly at random" in capsys.readouterr().out


def test_additive_shares_without_modulus_fails(capsys):
    def negative_last(value, n_shares, modulus):
        shares = [secrets.randbelow(modulus) for _ in range(n_shares - 1)]
        return [*shares, value - sum(shares)]

    assert not secagg_exercises.check_additive_shares(negative_last)
    assert "must lie in" in capsys.readouterr().out


def test_additive_shares_wrong_count_fails(capsys):
    assert not secagg_exercises.check_additive_shares(
        lambda value, n_shares, modulus: [value]
    )
    assert "returned 1" in capsys.readouterr().out


def test_shamir_reference_passes():
    assert secagg_exercises.check_shamir_reconstruct(reference_reconstruct)


def test_shamir_sum_of_values_fails(capsys):
    assert not secagg_exercises.check_shamir_reconstruct(
        lambda shares, prime: sum(y for _, y in shares) % prime
    )
    assert "Lagrange" in capsys.readouterr().out


def test_ring_bits_right_and_wrong(capsys):
    settings = dict(
        n_hospitals=20, max_update_norm=0.5, max_weight=400, precision_bits=16
    )
    # 20 * 200 * 2^16 = 262,144,000 needs 28 bits, plus a sign bit.
    assert secagg_exercises.check_ring_bits(**settings, answer=29)
    capsys.readouterr()
    assert not secagg_exercises.check_ring_bits(**settings, answer=28)
    assert "sign" in capsys.readouterr().out
    assert not secagg_exercises.check_ring_bits(**settings, answer=25)
    assert "sum of all" in capsys.readouterr().out
    assert not secagg_exercises.check_ring_bits(**settings, answer=32)


def test_dropout_tolerance_right_and_wrong(capsys):
    assert secagg_exercises.check_dropout_tolerance(
        n_hospitals=10, threshold=6, max_dropouts=4, colluders=6
    )
    capsys.readouterr()
    assert not secagg_exercises.check_dropout_tolerance(
        n_hospitals=10, threshold=6, max_dropouts=6, colluders=6
    )
    assert "t hospitals remain" in capsys.readouterr().out
    assert not secagg_exercises.check_dropout_tolerance(
        n_hospitals=10, threshold=6, max_dropouts=4, colluders=5
    )
    assert "both of its secrets" in capsys.readouterr().out
    with pytest.raises(ValueError, match="threshold"):
        secagg_exercises.check_dropout_tolerance(
            n_hospitals=3, threshold=4, max_dropouts=0, colluders=4
        )


def test_dropout_tolerance_checks_setting_types(capsys):
    assert secagg_exercises.check_dropout_tolerance(
        n_hospitals=np.int64(10), threshold=np.int64(6), max_dropouts=4, colluders=6
    )
    assert capsys.readouterr().out.startswith("Correct:")
    with pytest.raises(TypeError, match="threshold must be an int, got True"):
        secagg_exercises.check_dropout_tolerance(
            n_hospitals=3, threshold=True, max_dropouts=2, colluders=1
        )
    with pytest.raises(TypeError, match="n_hospitals must be an int, got '10'"):
        secagg_exercises.check_dropout_tolerance(
            n_hospitals="10", threshold=6, max_dropouts=4, colluders=6
        )


def test_ring_bits_one_value_message(capsys):
    settings = dict(
        n_hospitals=20, max_update_norm=0.5, max_weight=400, precision_bits=16
    )
    # One value of 200 * 2^16 = 13,107,200 needs 24 bits plus a sign bit.
    assert not secagg_exercises.check_ring_bits(**settings, answer=25)
    assert "but not the sum of all of them" in capsys.readouterr().out
