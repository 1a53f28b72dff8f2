"""Tests for the distributed discrete Gaussian noise and its use in secure rounds."""

from __future__ import annotations

import math
import random
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from helpers.distributed_noise import (
    VARIANCE_DENOMINATOR,
    hospital_variance,
    integer_sensitivity,
    make_hospital_noise,
    make_rng,
    noise_std_after_dropouts,
    ring_noise_bound,
    sample_discrete_gaussian,
    sample_discrete_gaussian_float,
    sum_gap_tau,
    tail_bound,
)
from helpers.hospital import Update
from helpers.models import SkinLesionCNN
from helpers.secure_aggregation import MASKED_INPUT
from helpers.secure_fedavg import SecureAggregator, flatten_delta, plain_weighted_sum

N_SAMPLES = 20_000
# With N_SAMPLES draws the sample variance has a relative standard error of
# about sqrt(2 / N_SAMPLES) = 1%, and the seeds are fixed, so 5% is 5 standard
# errors: a correct sampler passes and one off by a few percent fails.
VARIANCE_TOLERANCE = 0.05
PRECISION_BITS = 16
QUANTUM = 2.0**-PRECISION_BITS
MAX_UPDATE_NORM = 0.5


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def quiet_test_modes():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure aggregation runs in its")
        warnings.filterwarnings("ignore", message="The distributed noise is seeded")
        yield


def exact_pmf(sigma_squared, values):
    support = np.arange(-200, 201)
    weights = np.exp(-(support**2) / (2 * sigma_squared))
    return np.exp(-(np.asarray(values) ** 2) / (2 * sigma_squared)) / weights.sum()


@pytest.mark.parametrize("sigma_squared", [1, 4, 100, 10**6])
def test_exact_sampler_mean_and_variance(sigma_squared):
    samples = sample_discrete_gaussian(sigma_squared, N_SAMPLES, rng=make_rng(11))
    sigma = math.sqrt(sigma_squared)

    assert samples.dtype == np.int64
    assert samples.shape == (N_SAMPLES,)
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(N_SAMPLES)
    assert abs(samples.var() / sigma_squared - 1) < VARIANCE_TOLERANCE


def test_exact_sampler_is_symmetric():
    samples = sample_discrete_gaussian(25, N_SAMPLES, rng=make_rng(3))
    positive = np.count_nonzero(samples > 0)
    negative = np.count_nonzero(samples < 0)

    # Under symmetry the two counts differ by about sqrt(their sum).
    assert abs(positive - negative) < 5 * math.sqrt(positive + negative)
    for value in (1, 3, 7):
        plus = np.count_nonzero(samples == value)
        minus = np.count_nonzero(samples == -value)
        assert abs(plus - minus) < 5 * math.sqrt(plus + minus)


def test_exact_sampler_matches_probabilities():
    samples = sample_discrete_gaussian(1, N_SAMPLES, rng=make_rng(5))
    values = np.arange(-3, 4)
    expected = exact_pmf(1, values)

    for value, probability in zip(values, expected, strict=True):
        observed = np.count_nonzero(samples == value) / N_SAMPLES
        standard_error = math.sqrt(probability * (1 - probability) / N_SAMPLES)
        assert abs(observed - probability) < 5 * standard_error, value


def test_exact_sampler_takes_fractions():
    sigma_squared = Fraction(9, 4)
    samples = sample_discrete_gaussian(sigma_squared, N_SAMPLES, rng=make_rng(8))

    assert abs(samples.var() / 2.25 - 1) < VARIANCE_TOLERANCE
    assert np.array_equal(samples, np.round(samples))


def test_exact_sampler_repeats_with_seed():
    first = sample_discrete_gaussian(50, 200, rng=make_rng(1))
    second = sample_discrete_gaussian(50, 200, rng=make_rng(1))
    other = sample_discrete_gaussian(50, 200, rng=make_rng(2))

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)
    assert sample_discrete_gaussian(50, 0, rng=make_rng(1)).shape == (0,)


def test_exact_sampler_rejects_bad_input():
    rng = make_rng(0)
    with pytest.raises(TypeError, match="Fraction"):
        sample_discrete_gaussian(2.5, 10, rng=rng)
    with pytest.raises(ValueError, match="positive"):
        sample_discrete_gaussian(0, 10, rng=rng)
    with pytest.raises(ValueError, match="positive"):
        sample_discrete_gaussian(Fraction(-1, 2), 10, rng=rng)
    with pytest.raises(ValueError, match="size"):
        sample_discrete_gaussian(1, -1, rng=rng)


@pytest.mark.parametrize("sigma_squared", [1.0, 100.0, 1e6])
def test_float_sampler_mean_and_variance(sigma_squared):
    generator = np.random.default_rng(4)
    samples = sample_discrete_gaussian_float(
        sigma_squared, N_SAMPLES, generator=generator
    )
    sigma = math.sqrt(sigma_squared)

    assert samples.dtype == np.int64
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(N_SAMPLES)
    assert abs(samples.var() / sigma_squared - 1) < VARIANCE_TOLERANCE


def test_float_sampler_matches_probabilities():
    generator = np.random.default_rng(9)
    samples = sample_discrete_gaussian_float(1.0, N_SAMPLES, generator=generator)
    values = np.arange(-3, 4)

    for value, probability in zip(values, exact_pmf(1, values), strict=True):
        observed = np.count_nonzero(samples == value) / N_SAMPLES
        standard_error = math.sqrt(probability * (1 - probability) / N_SAMPLES)
        assert abs(observed - probability) < 5 * standard_error, value


def test_float_sampler_rejects_bad_input():
    generator = np.random.default_rng(0)
    with pytest.raises(ValueError, match="positive and finite"):
        sample_discrete_gaussian_float(math.inf, 3, generator=generator)
    with pytest.raises(ValueError, match="positive and finite"):
        sample_discrete_gaussian_float(-1.0, 3, generator=generator)
    with pytest.raises(ValueError, match="size"):
        sample_discrete_gaussian_float(1.0, 2.5, generator=generator)


def test_make_rng_modes():
    assert isinstance(make_rng(None), random.SystemRandom)
    seeded = make_rng(42)
    assert not isinstance(seeded, random.SystemRandom)
    assert seeded.randrange(10**9) == make_rng(42).randrange(10**9)
    with pytest.raises(TypeError, match="seed"):
        make_rng("42")
    with pytest.raises(TypeError, match="seed"):
        make_rng(True)


def test_integer_sensitivity_adds_rounding():
    assert integer_sensitivity(0.5, precision_bits=16, dimension=100) == 32768 + 5
    assert integer_sensitivity(1.0, precision_bits=0, dimension=4) == 2.0
    with pytest.raises(ValueError, match="max_update_norm"):
        integer_sensitivity(0.0, precision_bits=16, dimension=10)
    with pytest.raises(ValueError, match="dimension"):
        integer_sensitivity(1.0, precision_bits=16, dimension=0)


def test_hospital_variance_calibration():
    assert hospital_variance(10.0, threshold=4) == 25
    rounded = hospital_variance(1.0, threshold=3)
    assert rounded == Fraction(342, VARIANCE_DENOMINATOR)
    # Any t parts together reach at least the target variance.
    assert 3 * rounded >= 1
    assert 3 * rounded - 1 < Fraction(3, VARIANCE_DENOMINATOR)
    with pytest.raises(ValueError, match="threshold"):
        hospital_variance(10.0, threshold=0)
    with pytest.raises(ValueError, match="total_sigma"):
        hospital_variance(-1.0, threshold=2)


def test_noise_std_after_dropouts():
    variance = Fraction(25)

    all_parts = noise_std_after_dropouts(variance, n_hospitals=8, dropped=0)
    assert all_parts == pytest.approx(5 * math.sqrt(8))
    after_dropouts = noise_std_after_dropouts(variance, n_hospitals=8, dropped=2)
    assert after_dropouts == pytest.approx(5 * math.sqrt(6))
    with_colluders = noise_std_after_dropouts(
        variance, n_hospitals=8, dropped=2, colluding=3
    )
    assert with_colluders == pytest.approx(5 * math.sqrt(3))
    assert noise_std_after_dropouts(variance, n_hospitals=2, dropped=2) == 0.0
    with pytest.raises(ValueError, match="exceed"):
        noise_std_after_dropouts(variance, n_hospitals=4, dropped=3, colluding=2)
    with pytest.raises(ValueError, match="dropped"):
        noise_std_after_dropouts(variance, n_hospitals=4, dropped=-1)


def test_sum_gap_tau_values():
    assert sum_gap_tau(Fraction(1, 4), n_hospitals=1) == 0.0
    expected = 10 * math.exp(-2 * math.pi**2 * 0.25 / 2)
    assert sum_gap_tau(Fraction(1, 4), n_hospitals=2) == pytest.approx(expected)
    assert sum_gap_tau(1, n_hospitals=3) > sum_gap_tau(1, n_hospitals=2) > 0
    assert sum_gap_tau(100, n_hospitals=50) == 0.0
    with pytest.raises(ValueError, match="1/4"):
        sum_gap_tau(Fraction(1, 5), n_hospitals=2)


def test_tail_bound_values_and_empirical_tail():
    assert tail_bound(0) == 1.0
    assert tail_bound(3) == pytest.approx(2 * math.exp(-4.5))
    samples = sample_discrete_gaussian(100, N_SAMPLES, rng=make_rng(21))
    for k in (1, 2, 3):
        observed = np.count_nonzero(np.abs(samples) >= k * 10) / N_SAMPLES
        assert observed <= tail_bound(k), k
    with pytest.raises(ValueError, match="k"):
        tail_bound(-1)


def test_ring_noise_bound_formula_and_coverage():
    k = math.sqrt(2 * math.log(2 * 1000 / 1e-6))
    expected = math.ceil(k * 10) * QUANTUM
    assert ring_noise_bound(
        100, n_draws=1000, failure_probability=1e-6, precision_bits=PRECISION_BITS
    ) == pytest.approx(expected)

    bound = ring_noise_bound(
        100, n_draws=N_SAMPLES, failure_probability=1e-3, precision_bits=0
    )
    samples = sample_discrete_gaussian(100, N_SAMPLES, rng=make_rng(22))
    assert np.max(np.abs(samples)) <= bound
    with pytest.raises(ValueError, match="failure_probability"):
        ring_noise_bound(100, n_draws=10, failure_probability=1.0, precision_bits=0)
    with pytest.raises(ValueError, match="n_draws"):
        ring_noise_bound(100, n_draws=0, failure_probability=0.1, precision_bits=0)


def test_hook_is_on_grid_and_repeatable():
    hook = make_hospital_noise(
        hospital_variance=Fraction(10_000), precision_bits=PRECISION_BITS, seed=5
    )
    again = make_hospital_noise(
        hospital_variance=Fraction(10_000), precision_bits=PRECISION_BITS, seed=5
    )
    delta = np.zeros((3, 50))

    first = hook("a", delta)
    assert first.shape == (3, 50)
    assert np.array_equal(first / QUANTUM, np.round(first / QUANTUM))
    assert np.array_equal(first, again("a", delta))
    assert not np.array_equal(first, hook("a", delta))
    assert not np.array_equal(again("b", delta), first)


def test_hook_warns_when_seeded():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_hospital_noise(hospital_variance=4, precision_bits=8, seed=1)
    assert any("seeded" in str(warning.message) for warning in caught)


def test_hook_float_sampler_variance():
    hook = make_hospital_noise(
        hospital_variance=Fraction(400), precision_bits=0, seed=3, exact=False
    )
    noise = hook("a", np.zeros(N_SAMPLES))

    assert np.array_equal(noise, np.round(noise))
    assert abs(noise.var() / 400 - 1) < VARIANCE_TOLERANCE


def test_hook_rejects_bad_settings():
    with pytest.raises(TypeError, match="Fraction"):
        make_hospital_noise(hospital_variance=2.5, precision_bits=8)
    with pytest.raises(ValueError, match="precision_bits"):
        make_hospital_noise(hospital_variance=4, precision_bits=-1)
    with pytest.raises(TypeError, match="seed"):
        make_hospital_noise(hospital_variance=4, precision_bits=8, seed="x")


# Secure rounds with the hook: a tiny model, hand-made clipped updates, weight 1.


def tiny_state():
    model = SkinLesionCNN(width=4, groups=2, side=8, n_classes=3, seed=0)
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def clipped_updates(state, names, *, seed):
    generator = torch.Generator().manual_seed(seed)
    updates = []
    for name in names:
        delta = {
            key: torch.randn(value.shape, generator=generator)
            for key, value in state.items()
        }
        norm = math.sqrt(sum(float(torch.sum(v.double() ** 2)) for v in delta.values()))
        scale = 0.9 * MAX_UPDATE_NORM / norm
        delta = {key: value * scale for key, value in delta.items()}
        updates.append(Update(hospital=name, delta=delta, n_samples=1, train_loss=0.0))
    return updates


def secure_round(variance, *, names, dropouts=None):
    state = tiny_state()
    updates = clipped_updates(state, names, seed=1)
    dimension = sum(value.numel() for value in state.values())
    bound = ring_noise_bound(
        variance,
        n_draws=dimension * len(names),
        failure_probability=1e-9,
        precision_bits=PRECISION_BITS,
    )
    secure = SecureAggregator(
        max_update_norm=MAX_UPDATE_NORM,
        max_weight=1,
        precision_bits=PRECISION_BITS,
        seed=0,
        hospital_noise=make_hospital_noise(
            hospital_variance=variance, precision_bits=PRECISION_BITS, seed=7
        ),
        noise_bound=bound,
        dropouts=dropouts,
    )
    secure(state, updates)
    return secure.rounds[0], state, updates


def summed_noise_in_quanta(report, state, updates):
    included = [u for u in updates if u.hospital in report.included]
    plain_sum, _ = plain_weighted_sum(state, included)
    return (report.weighted_sum - plain_sum) / QUANTUM


def test_secure_sum_noise_has_target_variance():
    total_sigma = 300.0
    threshold = 3
    variance = hospital_variance(total_sigma, threshold=threshold)
    names = ["h0", "h1", "h2", "h3"]

    report, state, updates = secure_round(variance, names=names)
    noise = summed_noise_in_quanta(report, state, updates)

    assert report.included == names
    # The noise of all four parts, 4/3 of the target variance.
    expected = noise_std_after_dropouts(variance, n_hospitals=4, dropped=0) ** 2
    assert expected == pytest.approx(4 / 3 * total_sigma**2, rel=1e-5)
    assert abs(noise.var() / expected - 1) < 0.15
    assert abs(noise.mean()) < 5 * math.sqrt(expected / noise.size)


def test_secure_sum_is_the_hospitals_noise():
    variance = Fraction(2500)
    names = ["h0", "h1", "h2"]

    report, state, updates = secure_round(variance, names=names)
    noise = summed_noise_in_quanta(report, state, updates)

    replay = make_hospital_noise(
        hospital_variance=variance, precision_bits=PRECISION_BITS, seed=7
    )
    parts = [replay(u.hospital, flatten_delta(u, state)) / QUANTUM for u in updates]
    # Each hospital rounds its update once, at most half a quantum per value.
    assert np.max(np.abs(noise - sum(parts))) <= len(names) / 2 + 1e-6


def test_dropout_before_masking_removes_noise_part():
    total_sigma = 300.0
    variance = hospital_variance(total_sigma, threshold=3)
    names = ["h0", "h1", "h2", "h3"]

    report, state, updates = secure_round(
        variance, names=names, dropouts={1: {"h3": MASKED_INPUT}}
    )
    noise = summed_noise_in_quanta(report, state, updates)

    assert report.included == ["h0", "h1", "h2"]
    expected = noise_std_after_dropouts(variance, n_hospitals=4, dropped=1) ** 2
    assert expected == pytest.approx(total_sigma**2, rel=1e-5)
    assert abs(noise.var() / expected - 1) < 0.15


def test_noise_beyond_bound_raises():
    state = tiny_state()
    updates = clipped_updates(state, ["h0", "h1"], seed=2)
    secure = SecureAggregator(
        max_update_norm=MAX_UPDATE_NORM,
        max_weight=1,
        precision_bits=PRECISION_BITS,
        seed=0,
        hospital_noise=make_hospital_noise(
            hospital_variance=Fraction(10**8), precision_bits=PRECISION_BITS, seed=1
        ),
        noise_bound=10 * QUANTUM,
    )

    # SecureAggregator raises rather than let the sum wrap around the ring.
    with pytest.raises(ValueError, match="noise_bound|encoding's range"):
        secure(state, updates)
