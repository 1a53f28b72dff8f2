"""Tests for fixed-point encoding: negatives, precision, range and ring size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.fixed_point import (
    FixedPoint,
    as_ring_elements,
    check_float_setting,
    check_int_setting,
)


def test_round_trip_keeps_negatives_within_half_quantum():
    encoding = FixedPoint(precision_bits=16, max_abs=3.0, n_summands=4)
    values = np.array([-3.0, -1.23456, -(2.0**-17), 0.0, 0.5, 2.999999])

    decoded = encoding.decode(encoding.encode(values))

    assert encoding.quantum == 2.0**-16
    assert np.all(np.abs(decoded - values) <= encoding.quantum / 2)
    assert decoded[0] == -3.0
    assert np.all(np.sign(decoded[[0, 1, 4]]) == np.sign(values[[0, 1, 4]]))


def test_negative_one_is_top_of_ring():
    encoding = FixedPoint(precision_bits=0, max_abs=5.0, n_summands=2)

    encoded = encoding.encode(np.array([-1.0, 1.0]))

    assert encoded.dtype == np.uint64
    assert int(encoded[0]) == encoding.modulus - 1
    assert int(encoded[1]) == 1


def test_encode_accepts_tensor_and_scalar():
    encoding = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=2)

    from_tensor = encoding.encode(torch.tensor([0.25, -0.5]))
    from_scalar = encoding.encode(-0.5)

    assert np.array_equal(encoding.decode(from_tensor), [0.25, -0.5])
    assert float(encoding.decode(from_scalar)) == -0.5


def test_ring_bits_derived_from_sum_range():
    # 3 * 2^8 = 768 needs 10 bits of magnitude plus a sign bit.
    small = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=3)
    assert small.max_integer == 256
    assert small.required_ring_bits == 11
    assert small.ring_bits == 11
    assert small.sum_max_abs == 3.0

    many = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=50)
    assert many.ring_bits == (50 * 256).bit_length() + 1
    assert many.ring_bits > small.ring_bits


def test_sum_of_fifty_extremes_does_not_wrap():
    # Fifty hospitals at the edge of the range: a 32-bit ring would overflow.
    encoding = FixedPoint(precision_bits=24, max_abs=200.0, n_summands=50)
    assert encoding.ring_bits > 32
    for sign in (1.0, -1.0):
        values = [np.full(4, sign * 200.0)] * 50
        total = encoding.sum_encoded([encoding.encode(v) for v in values])
        assert np.array_equal(encoding.decode(total), np.full(4, sign * 10_000.0))


def test_thirty_two_bit_ring_rejected_for_fifty_hospitals():
    with pytest.raises(ValueError, match="needs a ring of at least"):
        FixedPoint(precision_bits=24, max_abs=200.0, n_summands=50, ring_bits=32)


def test_explicit_larger_ring_allowed():
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=2, ring_bits=64)

    encoded = encoding.encode(np.array([-1.0, 0.5]))

    assert encoding.ring_bits == 64
    assert int(encoded[0]) == 2**64 - 16
    assert np.array_equal(encoding.decode(encoded), [-1.0, 0.5])


def test_out_of_range_raises_not_clips():
    encoding = FixedPoint(precision_bits=10, max_abs=1.0, n_summands=2)

    with pytest.raises(ValueError, match="outside the encoding's range"):
        encoding.encode(np.array([0.0, 1.0001]))
    with pytest.raises(ValueError, match="outside the encoding's range"):
        encoding.encode(np.array([-1.5]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        encoding.encode(np.array([np.nan]))


def test_range_limit_itself_encodes():
    encoding = FixedPoint(precision_bits=10, max_abs=1.0, n_summands=2)

    total = encoding.add(encoding.encode([1.0, -1.0]), encoding.encode([1.0, -1.0]))

    assert np.array_equal(encoding.decode(total), [2.0, -2.0])


def test_too_many_summands_rejected():
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=2)
    parts = [encoding.encode([1.0])] * 3

    with pytest.raises(ValueError, match="at most 2 values"):
        encoding.sum_encoded(parts)
    with pytest.raises(ValueError, match="no encoded values"):
        encoding.sum_encoded([])


def test_mismatched_shapes_rejected():
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=2)

    with pytest.raises(ValueError, match="one shape"):
        encoding.add(encoding.encode([1.0, 0.0]), encoding.encode([1.0]))


def test_negate_is_additive_inverse():
    encoding = FixedPoint(precision_bits=6, max_abs=2.0, n_summands=2)
    encoded = encoding.encode([1.5, -0.25, 0.0])

    zero = encoding.add(encoded, encoding.negate(encoded))

    assert np.array_equal(zero, np.zeros(3, dtype=np.uint64))


def test_to_signed_full_64_bit_ring():
    encoding = FixedPoint(precision_bits=0, max_abs=3.0, n_summands=2, ring_bits=64)

    signed = encoding.to_signed(encoding.encode([-3.0, 3.0]))

    assert signed.tolist() == [-3, 3]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"precision_bits": -1, "max_abs": 1.0, "n_summands": 2}, "precision_bits"),
        ({"precision_bits": 4, "max_abs": 0.0, "n_summands": 2}, "max_abs"),
        ({"precision_bits": 4, "max_abs": float("inf"), "n_summands": 2}, "max_abs"),
        ({"precision_bits": 4, "max_abs": 1.0, "n_summands": 0}, "n_summands"),
        ({"precision_bits": 60, "max_abs": 1.0, "n_summands": 2}, "float64"),
        ({"precision_bits": 30, "max_abs": 1e4, "n_summands": 2**20}, "64 bits"),
        (
            {"precision_bits": 4, "max_abs": 1.0, "n_summands": 2, "ring_bits": 3},
            "ring",
        ),
    ],
)
def test_invalid_settings_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        FixedPoint(**settings)


def test_out_of_range_message_prints_every_digit():
    encoding = FixedPoint(precision_bits=10, max_abs=1.0, n_summands=2)

    with pytest.raises(ValueError) as caught:
        encoding.encode(np.array([0.5, 1.0000001]))

    assert "magnitude 1.0000001 is outside" in str(caught.value)
    assert "range [-1.0, 1.0]" in str(caught.value)


def test_range_below_quantum_rejected():
    # 0.01 * 2^7 = 1.28 is the first scaled range that reaches the integer 1.
    with pytest.raises(ValueError, match="Raise precision_bits to at least 7"):
        FixedPoint(precision_bits=2, max_abs=0.01, n_summands=2)
    with pytest.raises(ValueError, match="below the quantum 2\\^-6"):
        FixedPoint(precision_bits=6, max_abs=0.01, n_summands=2)

    smallest = FixedPoint(precision_bits=7, max_abs=0.01, n_summands=2)
    assert smallest.max_integer == 1
    assert smallest.decode(smallest.encode([0.0078125]))[0] == 0.0078125


def test_numpy_settings_accepted_and_stored_as_python_numbers():
    encoding = FixedPoint(
        precision_bits=np.int64(8), max_abs=np.float32(1.0), n_summands=np.int32(3)
    )

    assert encoding == FixedPoint(precision_bits=8, max_abs=1.0, n_summands=3)
    assert type(encoding.precision_bits) is int
    assert type(encoding.max_abs) is float
    assert type(encoding.n_summands) is int
    assert encoding.ring_bits == 11
    from_int = FixedPoint(precision_bits=8, max_abs=np.int64(2), n_summands=2)
    assert from_int.max_abs == 2.0


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"precision_bits": True}, "precision_bits must be an int, got True"),
        ({"precision_bits": "24"}, "precision_bits must be an int, got '24'"),
        ({"precision_bits": 8.0}, "precision_bits must be an int, got 8.0"),
        ({"max_abs": True}, "max_abs must be a real number"),
        ({"max_abs": "1.0"}, "max_abs must be a real number"),
        ({"n_summands": np.bool_(True)}, "n_summands must be an int"),
        ({"ring_bits": 32.0}, "ring_bits must be an int"),
    ],
)
def test_setting_of_wrong_type_raises_type_error(settings, message):
    defaults = {"precision_bits": 8, "max_abs": 1.0, "n_summands": 2}

    with pytest.raises(TypeError, match=message):
        FixedPoint(**{**defaults, **settings})


@pytest.mark.parametrize(
    "values, kind",
    [
        (np.array([1 + 1j]), "complex128"),
        ("1", "<U1"),
        (np.array([True, False]), "bool"),
        (np.array([0.5, None], dtype=object), "object"),
        (torch.tensor([True]), "torch.bool"),
        (torch.tensor([1 + 1j]), "torch.complex64"),
    ],
)
def test_encode_rejects_non_real_input(values, kind):
    encoding = FixedPoint(precision_bits=8, max_abs=2.0, n_summands=2)

    with pytest.raises(TypeError, match=f"takes real numbers.*{kind}"):
        encoding.encode(values)


def test_encode_accepts_integer_arrays():
    encoding = FixedPoint(precision_bits=4, max_abs=3.0, n_summands=2)

    assert encoding.decode(encoding.encode(np.array([-3, 2]))).tolist() == [-3.0, 2.0]


def test_decode_takes_only_ring_elements():
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=2)

    with pytest.raises(TypeError, match="must be unsigned integers.*float64"):
        encoding.decode(np.array([1.5]))
    with pytest.raises(ValueError, match="got the negative value -1"):
        encoding.decode(np.array([-1]))
    with pytest.raises(TypeError, match="unsigned integers"):
        encoding.to_signed(np.array([0.0]))
    # Non-negative signed integers are ring elements too.
    assert encoding.decode(np.array([8, encoding.modulus - 8])).tolist() == [0.5, -0.5]


def test_ring_operations_reject_non_ring_input():
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=2)
    one = encoding.encode([1.0])

    with pytest.raises(TypeError, match="unsigned integers"):
        encoding.add(one, np.array([0.5]))
    with pytest.raises(ValueError, match="negative"):
        encoding.negate(np.array([-16]))
    with pytest.raises(TypeError, match="unsigned integers"):
        encoding.reduce(np.array([2.0]))
    assert encoding.negate(np.array([16])).tolist() == [encoding.modulus - 16]


def test_check_in_ring_rejects_values_beyond_ring():
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=2)
    top = encoding.modulus - 1
    inside = np.array([0, top], dtype=np.uint64)

    assert encoding.ring_bits == 7
    assert encoding.check_in_ring(inside).tolist() == [0, top]
    with pytest.raises(ValueError, match="contain 128, outside the 7-bit ring"):
        encoding.check_in_ring(np.array([top + 1], dtype=np.uint64), "shares")
    with pytest.raises(TypeError, match="shares must be unsigned"):
        encoding.check_in_ring(np.array([0.0]), "shares")
    # The reduction still maps large integers into the ring, as sums need.
    assert encoding.reduce(np.array([top + 1], dtype=np.uint64)).tolist() == [0]


def test_as_ring_elements_passes_uint64_without_copy():
    array = np.arange(3, dtype=np.uint64)

    assert as_ring_elements(array) is array
    assert as_ring_elements(np.array([2, 3], dtype=np.int32)).dtype == np.uint64
    assert as_ring_elements(np.array([], dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize(
    "value, expected",
    [(3, 3), (np.int64(3), 3), (np.uint8(7), 7), (0, 0)],
)
def test_check_int_setting_accepts_integers(value, expected):
    checked = check_int_setting(value, "count", minimum=0)

    assert checked == expected
    assert type(checked) is int


@pytest.mark.parametrize("value", [True, np.bool_(False), 3.0, "3", None])
def test_check_int_setting_rejects_other_types(value):
    with pytest.raises(TypeError, match="count must be an int, got"):
        check_int_setting(value, "count", minimum=0)


def test_check_int_setting_minimum():
    with pytest.raises(ValueError, match="count must be >= 2, got 1"):
        check_int_setting(1, "count", minimum=2)
    assert check_int_setting(-5, "offset") == -5


@pytest.mark.parametrize(
    "value, expected",
    [(0.5, 0.5), (np.float32(0.5), 0.5), (np.float64(2.0), 2.0), (3, 3.0)],
)
def test_check_float_setting_accepts_real_numbers(value, expected):
    checked = check_float_setting(value, "scale")

    assert checked == expected
    assert type(checked) is float


def test_check_float_setting_rejects_bad_values():
    for value in (True, np.bool_(True), "1.0", None, 1j):
        with pytest.raises(TypeError, match="scale must be a real number"):
            check_float_setting(value, "scale")
    for value in (0.0, -1.0, float("inf"), float("nan"), 10**400):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            check_float_setting(value, "scale")
    assert check_float_setting(0, "bound", allow_zero=True) == 0.0
    with pytest.raises(ValueError, match="bound must be a finite number >= 0"):
        check_float_setting(-0.5, "bound", allow_zero=True)
