"""Tests for the cryptographic primitives: randomness, key agreement, PRG, AES-GCM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from helpers import crypto
from helpers.crypto import (
    RandomSource,
    agree_key,
    check_public_key,
    commitment,
    decrypt,
    encrypt,
    expand_mask,
    private_bytes,
    public_bytes,
    public_key_of,
)
from helpers.secure_aggregation import uniformity_pvalue


def test_random_source_seeded_is_reproducible():
    first = RandomSource(5, warn=False)
    second = RandomSource(5, warn=False)
    other = RandomSource(6, warn=False)

    assert first.bytes(16) == second.bytes(16)
    assert first.bytes(16) != other.bytes(16)
    assert RandomSource().bytes(16) != RandomSource().bytes(16)
    assert all(0 <= first.below(10) < 10 for _ in range(200))
    assert {first.below(3) for _ in range(200)} == {0, 1, 2}


def test_random_source_seeded_warns(monkeypatch):
    monkeypatch.setattr(crypto, "_seeded_warning_shown", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RandomSource(1)
    assert any("test mode" in str(w.message) for w in caught)
    with pytest.raises(TypeError, match="seed"):
        RandomSource(1.5)


def test_key_agreement_is_symmetric_and_purpose_bound():
    rng = RandomSource(9, warn=False)
    a, b = rng.key_pair(), rng.key_pair()
    a_public, b_public = public_bytes(a.public_key()), public_bytes(b.public_key())

    assert agree_key(a, b_public, purpose=b"x") == agree_key(b, a_public, purpose=b"x")
    assert agree_key(a, b_public, purpose=b"x") != agree_key(a, b_public, purpose=b"y")
    assert public_key_of(private_bytes(a)) == a_public
    assert agree_key(private_bytes(a), b_public, purpose=b"x") == agree_key(
        a, b_public, purpose=b"x"
    )


def test_expand_mask_deterministic_and_in_ring():
    seed = bytes(range(32))

    mask = expand_mask(seed, 5000, ring_bits=20)

    assert mask.dtype == np.uint64
    assert mask.shape == (5000,)
    assert int(mask.max()) < 2**20
    assert np.array_equal(mask, expand_mask(seed, 5000, ring_bits=20))
    assert not np.array_equal(mask, expand_mask(bytes(32), 5000, ring_bits=20))
    assert uniformity_pvalue(mask, ring_bits=20) > 1e-3
    with pytest.raises(ValueError, match="32 bytes"):
        expand_mask(b"short", 4, ring_bits=20)


def test_encrypt_round_trip_and_tamper_detected():
    key, nonce = bytes(32), bytes(12)
    message = encrypt(key, b"share", associated=b"a->b", nonce=nonce)

    assert decrypt(key, message, associated=b"a->b") == b"share"
    tampered = message[:-1] + bytes([message[-1] ^ 1])
    with pytest.raises(ValueError, match="changed in transit"):
        decrypt(key, tampered, associated=b"a->b")
    with pytest.raises(ValueError, match="changed in transit"):
        decrypt(key, message, associated=b"a->c")


def test_expand_mask_empty_and_full_ring():
    assert expand_mask(bytes(32), 0, ring_bits=8).shape == (0,)
    full = expand_mask(bytes(32), 4000, ring_bits=64)
    assert int(full.max()) >= 2**63
    with pytest.raises(ValueError, match="ring_bits"):
        expand_mask(bytes(32), 4, ring_bits=65)


def test_random_source_rejects_invalid_requests():
    rng = RandomSource(4, warn=False)
    assert rng.below(1) == 0
    with pytest.raises(ValueError, match="bound"):
        rng.below(0)
    with pytest.raises(ValueError, match="count"):
        rng.bytes(-1)
    assert "tests only" in repr(rng)


def test_random_source_accepts_numpy_integer_seed():
    assert RandomSource(np.int64(5), warn=False).bytes(16) == RandomSource(
        5, warn=False
    ).bytes(16)
    with pytest.raises(TypeError, match="seed"):
        RandomSource(True, warn=False)


def test_check_public_key_accepts_real_key():
    key = RandomSource(2, warn=False).key_pair()

    assert check_public_key(public_bytes(key.public_key())) is None


# A point of order 8 on Curve25519: an exchange with it gives zero.
ORDER_EIGHT_POINT = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
)


@pytest.mark.parametrize(
    "key, message",
    [
        (b"\x01" * 5, "must be 32 raw bytes, got 5 bytes"),
        ("x" * 32, "must be 32 raw bytes, got str"),
        (None, "must be 32 raw bytes, got NoneType"),
        (bytes(32), "is a low-order X25519 point"),
        (b"\x01" + bytes(31), "is a low-order X25519 point"),
        (ORDER_EIGHT_POINT, "is a low-order X25519 point"),
    ],
    ids=["5 bytes", "str", "None", "zero", "one", "order 8"],
)
def test_check_public_key_rejects_malformed_and_low_order(key, message):
    with pytest.raises(ValueError, match=f"the peer key {message}"):
        check_public_key(key, "the peer key")


def test_commitment_binds_secret_and_context():
    seed = bytes(range(32))

    first = commitment(seed, context=b"round 1|a")

    assert len(first) == 32
    assert first == commitment(seed, context=b"round 1|a")
    assert first != commitment(bytes(32), context=b"round 1|a")
    assert first != commitment(seed, context=b"round 1|b")
    # The context's length is hashed too, so the split point matters.
    assert commitment(b"b" + seed, context=b"a") != commitment(seed, context=b"ab")
    with pytest.raises(TypeError, match="must be bytes"):
        commitment("seed", context=b"x")
