"""Fixed-point encoding of real numbers into the ring of integers modulo 2^k.

Masking and secret sharing work on integers modulo a ring size M = 2^k, where
sums wrap around. Real-valued updates therefore travel as fixed-point numbers:
a value v becomes the integer round(v * 2^f) modulo M, where f is the number of
precision bits, and the quantum 2^-f is the resolution. Negative numbers are
the upper half of the ring (two's complement): -1 is M - 1.

The ring must be large enough for the sum, not only for one value. If n
hospitals each send values of magnitude at most A, the sum lies in [-nA, nA],
so M must exceed 2 * n * A * 2^f, or the sum wraps and decodes to a wrong
number without any error. `FixedPoint` derives k from n, A and f, and raises on
any input outside [-A, A] rather than clipping it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Encoded values are stored in uint64 arrays, whose additions wrap modulo 2^64.
# A smaller ring of 2^k divides 2^64, so reducing the result modulo 2^k is exact.
MAX_RING_BITS = 64
# float64 represents every integer up to 2^53 exactly.
_EXACT_FLOAT_BITS = 53


@dataclass(frozen=True)
class FixedPoint:
    """A fixed-point encoding sized so that a sum of `n_summands` values cannot wrap.

    Args:
        precision_bits: f, the bits after the binary point. The quantum is 2^-f.
        max_abs: A, the largest magnitude one encoded value may have. Encoding
            a larger value raises ValueError.
        n_summands: n, how many encoded values may be added together.
        ring_bits: k, the ring size as a power of two. None derives the
            smallest k whose signed range holds n * A; a given k must be at
            least that.

    Raises:
        TypeError: on a setting of the wrong type: a bool, a str, or a float
            where an int is expected. NumPy numbers pass.
        ValueError: on invalid settings, a range below the quantum 2^-f, a
            `ring_bits` too small for the sum, or a sum that would need more
            than 64 bits.
    """

    precision_bits: int
    max_abs: float
    n_summands: int
    ring_bits: int | None = None
    required_ring_bits: int = field(init=False)

    def __post_init__(self) -> None:
        precision_bits = check_int_setting(
            self.precision_bits, "precision_bits", minimum=0
        )
        object.__setattr__(self, "precision_bits", precision_bits)
        n_summands = check_int_setting(self.n_summands, "n_summands", minimum=1)
        object.__setattr__(self, "n_summands", n_summands)
        object.__setattr__(
            self, "max_abs", check_float_setting(self.max_abs, "max_abs")
        )
        if self.max_abs * 2.0**self.precision_bits < 1:
            needed = math.ceil(-math.log2(self.max_abs))
            raise ValueError(
                f"max_abs {self.max_abs!r} is below the quantum 2^-{precision_bits}, "
                "so the encoding cannot resolve its own range: values would round "
                "to 0 or to a quantum beyond max_abs. Raise precision_bits to at "
                f"least {needed}."
            )
        if self.max_integer.bit_length() > _EXACT_FLOAT_BITS:
            raise ValueError(
                f"max_abs {self.max_abs:g} at {self.precision_bits} precision bits "
                f"needs integers above 2^{_EXACT_FLOAT_BITS}, which float64 cannot "
                "round exactly. Lower precision_bits or max_abs."
            )

        # The sum's magnitude is at most n * max_integer, and a signed ring of
        # k bits holds magnitudes up to 2^(k-1) - 1.
        required = (self.n_summands * self.max_integer).bit_length() + 1
        object.__setattr__(self, "required_ring_bits", required)
        if required > MAX_RING_BITS:
            raise ValueError(
                f"A sum of {self.n_summands} values of magnitude up to "
                f"{self.max_abs:g} at {self.precision_bits} precision bits needs a "
                f"{required}-bit ring, more than the {MAX_RING_BITS} bits supported. "
                "Lower precision_bits, the bound or the number of summands."
            )
        if self.ring_bits is None:
            object.__setattr__(self, "ring_bits", required)
        else:
            ring_bits = check_int_setting(self.ring_bits, "ring_bits", minimum=1)
            object.__setattr__(self, "ring_bits", ring_bits)
            if not required <= self.ring_bits <= MAX_RING_BITS:
                raise ValueError(
                    f"A sum of {self.n_summands} values of magnitude up to "
                    f"{self.max_abs:g} at {self.precision_bits} precision bits "
                    f"needs a ring of at least {required} bits, got ring_bits "
                    f"{self.ring_bits} (at most {MAX_RING_BITS} are supported). "
                    "Its sum would wrap around and decode to a wrong value."
                )

    @property
    def quantum(self) -> float:
        """The resolution 2^-f: encoding changes a value by at most half of it."""
        return 2.0**-self.precision_bits

    @property
    def modulus(self) -> int:
        """The ring size M = 2^ring_bits, as a Python int."""
        return 1 << self.ring_bits

    @property
    def max_integer(self) -> int:
        """The largest encoded magnitude of one value: round(A * 2^f)."""
        return math.floor(self.max_abs * 2**self.precision_bits + 0.5)

    @property
    def sum_max_abs(self) -> float:
        """The largest magnitude the sum of `n_summands` values can reach."""
        return self.n_summands * self.max_abs

    def encode(self, values: np.ndarray | torch.Tensor | float) -> np.ndarray:
        """Encode real values as ring elements round(v * 2^f) mod 2^k.

        Returns:
            uint64 array of the input's shape.

        Raises:
            TypeError: if the values are not real numbers (complex, bool,
                string or object input).
            ValueError: if a value is NaN, infinite or outside [-max_abs,
                max_abs]. Nothing is clipped.
        """
        array = _as_float64(values)
        if not np.all(np.isfinite(array)):
            raise ValueError("Cannot encode NaN or infinite values.")
        largest = float(np.max(np.abs(array))) if array.size else 0.0
        if largest > self.max_abs:
            # repr prints enough digits to tell any two floats apart, so
            # 1.0000001 does not read as 1.
            raise ValueError(
                f"A value of magnitude {largest!r} is outside the encoding's range "
                f"[-{self.max_abs!r}, {self.max_abs!r}]. Nothing is clipped: clip "
                "the update to the declared bound before encoding, or declare a "
                "larger bound."
            )

        integers = np.rint(array * 2.0**self.precision_bits).astype(np.int64)
        return self.reduce(integers.view(np.uint64))

    def decode(self, encoded: np.ndarray) -> np.ndarray:
        """Decode ring elements (one value or a sum) back to float64.

        Elements in the upper half of the ring are negative. A sum of at most
        `n_summands` encoded values decodes to the sum of their rounded values.

        Raises:
            TypeError: if `encoded` is not an array of unsigned integers (a
                float array is a value to `encode`, not a ring element).
            ValueError: if it contains negative integers.
        """
        signed = self.to_signed(encoded)
        return signed.astype(np.float64) * self.quantum

    def to_signed(self, encoded: np.ndarray) -> np.ndarray:
        """Map ring elements to the signed integers in [-M/2, M/2) they stand for."""
        reduced = self.reduce(encoded)
        if self.ring_bits == MAX_RING_BITS:
            return reduced.view(np.int64)
        signed = reduced.astype(np.int64)
        signed[signed >= 1 << (self.ring_bits - 1)] -= 1 << self.ring_bits
        return signed

    def reduce(self, encoded: np.ndarray) -> np.ndarray:
        """Return uint64 ring elements reduced modulo 2^ring_bits (a new array).

        Raises:
            TypeError: if `encoded` is not an array of integers.
            ValueError: if it contains negative integers.
        """
        reduced = np.array(as_ring_elements(encoded), dtype=np.uint64, copy=True)
        if self.ring_bits < MAX_RING_BITS:
            reduced &= np.uint64(self.modulus - 1)
        return reduced

    def check_in_ring(self, encoded: Any, name: str = "ring elements") -> np.ndarray:
        """Return `encoded` as uint64 if every value is an element of this ring.

        Unlike `reduce`, which maps any non-negative integer into the ring, this
        rejects values of 2^ring_bits or more: an input that should already
        be a ring element but is not would otherwise be changed silently.

        Raises:
            TypeError: if `encoded` is not an array of integers.
            ValueError: if a value is negative or at least 2^ring_bits.
        """
        array = as_ring_elements(encoded, name)
        if self.ring_bits < MAX_RING_BITS and array.size:
            largest = int(array.max())
            if largest >= self.modulus:
                raise ValueError(
                    f"{name} contain {largest}, outside the {self.ring_bits}-bit "
                    f"ring [0, 2^{self.ring_bits}). Encode values with this "
                    "FixedPoint, or build one with a larger ring."
                )
        return array

    def add(self, *encoded: np.ndarray) -> np.ndarray:
        """Add ring elements modulo 2^ring_bits (shapes must match)."""
        return self.reduce(_modular_sum(encoded))

    def negate(self, encoded: np.ndarray) -> np.ndarray:
        """Return the additive inverse -x mod 2^ring_bits."""
        encoded = as_ring_elements(encoded)
        return self.reduce(np.zeros_like(encoded) - encoded)

    def sum_encoded(self, encoded: Sequence[np.ndarray]) -> np.ndarray:
        """Add encoded values, refusing more than `n_summands` of them.

        Raises:
            ValueError: on more than `n_summands` values (their sum could wrap),
                none at all, or mismatched shapes.
        """
        encoded = list(encoded)
        if not encoded:
            raise ValueError("There are no encoded values to add.")
        if len(encoded) > self.n_summands:
            raise ValueError(
                f"The ring was sized for sums of at most {self.n_summands} values, "
                f"got {len(encoded)}: their sum could wrap. Build a FixedPoint "
                "with a larger n_summands."
            )
        return self.add(*encoded)


def _modular_sum(arrays: Sequence[np.ndarray]) -> np.ndarray:
    shapes = {np.shape(array) for array in arrays}
    if len(shapes) != 1:
        raise ValueError(
            f"Ring elements must all have one shape to be added, got {sorted(shapes)}."
        )
    total = np.zeros(shapes.pop(), dtype=np.uint64)
    for array in arrays:
        # uint64 additions wrap modulo 2^64, which the caller reduces further.
        total += as_ring_elements(array)
    return total


def as_ring_elements(encoded: Any, name: str = "ring elements") -> np.ndarray:
    """Return `encoded` as a uint64 array if it contains non-negative integers.

    Unsigned arrays pass unchanged (no copy). Signed integer arrays pass if
    no value is negative. Anything else is a value still to encode, not a ring
    element, and is rejected rather than truncated or wrapped.

    Raises:
        TypeError: if `encoded` is not an integer array or scalar.
        ValueError: if it contains a negative integer.
    """
    array = np.asarray(encoded)
    if array.dtype.kind == "u":
        return array.astype(np.uint64, copy=False)
    if array.dtype.kind != "i":
        raise TypeError(
            f"{name} must be unsigned integers (uint64, as FixedPoint.encode "
            f"returns), got dtype {array.dtype}. Encode real values with "
            "FixedPoint.encode first."
        )
    if array.size and int(array.min()) < 0:
        raise ValueError(
            f"{name} must lie in [0, 2^ring_bits), got the negative value "
            f"{int(array.min())}. Encode signed values with FixedPoint.encode."
        )
    return array.astype(np.uint64)


def check_int_setting(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return an integer setting as a Python int if it is at least `minimum`.

    Python ints and NumPy integers pass. A bool is rejected although Python
    counts it as an int, because True in place of a count is a mistake.

    Raises:
        TypeError: if `value` is a bool or not an integer.
        ValueError: if `value` is below `minimum`.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"{name} must be an int, got {value!r} of type {type(value).__name__}."
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_float_setting(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return a real setting as a Python float if it is finite and positive.

    Python and NumPy floats and integers pass, bools do not. With
    `allow_zero`, 0 passes too.

    Raises:
        TypeError: if `value` is a bool or not a real number.
        ValueError: if `value` is NaN, infinite, negative, or 0 without
            `allow_zero`.
    """
    is_real = isinstance(value, int | float | np.integer | np.floating)
    if isinstance(value, bool | np.bool_) or not is_real:
        raise TypeError(
            f"{name} must be a real number (int or float), got {value!r} of type "
            f"{type(value).__name__}."
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return number


def _as_float64(values: np.ndarray | torch.Tensor | float) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(
                f"FixedPoint.encode takes real numbers, got a tensor of {values.dtype}."
            )
        return values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        raise TypeError(
            "FixedPoint.encode takes real numbers (float or integer arrays, "
            f"tensors or scalars), got {type(values).__name__} of dtype {array.dtype}."
        )
    return array.astype(np.float64)
