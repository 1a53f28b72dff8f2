"""Tests for the capstone notebook's checkers: right solutions pass, wrong ones hint."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from helpers import capstone_exercises
from helpers.distributed_noise import hospital_variance
from helpers.privacy import epsilon_spent


def reference_epsilon(*, noise_multiplier, rounds, delta):
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=1.0)
    return accountant.get_epsilon(delta)


RIGHT_PROTECTIONS = {
    "one hospital's update, read by the server": {
        "differential privacy",
        "secure aggregation",
    },
    "the sum of the updates, read by the server": {"differential privacy"},
    "membership of an image, read off the released model": {"differential privacy"},
    "the training-set sizes and label histograms a hospital publishes": set(),
}


# check_hospital_variance


def test_hospital_variance_exact_passes(capsys):
    # 300^2 / 3 = 30,000 quanta squared.
    assert capstone_exercises.check_hospital_variance(
        total_sigma=300.0, threshold=3, answer=30_000.0
    )
    assert capsys.readouterr().out.startswith("Correct:")


def test_hospital_variance_rounded_passes(capsys):
    # 1.5^2 / 7 = 0.3214..., which hospital_variance rounds up to 330/1024, 0.3223,
    # 0.26% above and so inside the 0.5% tolerance.
    rounded = hospital_variance(1.5, threshold=7)
    assert rounded == Fraction(330, 1024)
    assert capstone_exercises.check_hospital_variance(
        total_sigma=1.5, threshold=7, answer=rounded
    )
    assert capsys.readouterr().out.startswith("Correct:")


def test_hospital_variance_three_figures_pass(capsys):
    # 1.5^2 / 7 = 0.32142..., so 0.321 is right to three significant figures.
    assert capstone_exercises.check_hospital_variance(
        total_sigma=1.5, threshold=7, answer=0.321
    )
    assert capsys.readouterr().out.startswith("Correct:")
    assert not capstone_exercises.check_hospital_variance(
        total_sigma=1.5, threshold=7, answer=0.33
    )


def test_hospital_variance_accepts_numpy_numbers(capsys):
    assert capstone_exercises.check_hospital_variance(
        total_sigma=np.float64(300.0), threshold=np.int64(3), answer=np.float32(3e4)
    )
    assert capsys.readouterr().out.startswith("Correct:")


def test_hospital_variance_within_tolerance_passes(capsys):
    assert capstone_exercises.check_hospital_variance(
        total_sigma=300.0, threshold=3, answer=30_000.0 * (1 + 5e-4)
    )
    assert capsys.readouterr().out.startswith("Correct:")


def test_hospital_variance_divided_std_fails(capsys):
    assert not capstone_exercises.check_hospital_variance(
        total_sigma=300.0, threshold=3, answer=100.0
    )
    out = capsys.readouterr().out
    assert out.startswith("Not yet:")
    assert "you divided the standard deviation" in out


def test_hospital_variance_std_per_hospital_fails(capsys):
    assert not capstone_exercises.check_hospital_variance(
        total_sigma=300.0, threshold=3, answer=300.0 / math.sqrt(3)
    )
    assert "asks for its variance" in capsys.readouterr().out


def test_hospital_variance_divided_by_all_hospitals_fails(capsys):
    # 300^2 / 10 hospitals: any 3 honest ones then add up to 27,000 < 90,000.
    assert not capstone_exercises.check_hospital_variance(
        total_sigma=300.0, threshold=3, answer=9_000.0
    )
    out = capsys.readouterr().out
    assert "too little noise" in out
    assert "how few honest parts" in out
    assert "Colluding hospitals" in out


def test_hospital_variance_whole_variance_fails(capsys):
    assert not capstone_exercises.check_hospital_variance(
        total_sigma=300.0, threshold=3, answer=90_000.0
    )
    assert "variance of the whole noise" in capsys.readouterr().out


def test_hospital_variance_too_large_fails(capsys):
    assert not capstone_exercises.check_hospital_variance(
        total_sigma=300.0, threshold=3, answer=45_000.0
    )
    assert "more noise than needed" in capsys.readouterr().out


def test_hospital_variance_hint_hides_answer(capsys):
    capstone_exercises.check_hospital_variance(
        total_sigma=300.0, threshold=3, answer=100.0
    )
    assert "3e+04" not in capsys.readouterr().out


def test_hospital_variance_bad_arguments_raise():
    with pytest.raises(ValueError, match="total_sigma must be a finite number > 0"):
        capstone_exercises.check_hospital_variance(
            total_sigma=-1.0, threshold=3, answer=1.0
        )
    with pytest.raises(ValueError, match="threshold must be >= 1, got 0"):
        capstone_exercises.check_hospital_variance(
            total_sigma=1.0, threshold=0, answer=1.0
        )
    with pytest.raises(TypeError, match="threshold must be an int, got 2.5"):
        capstone_exercises.check_hospital_variance(
            total_sigma=1.0, threshold=2.5, answer=1.0
        )
    with pytest.raises(TypeError, match="answer must be a number, got '1'"):
        capstone_exercises.check_hospital_variance(
            total_sigma=1.0, threshold=2, answer="1"
        )
    with pytest.raises(TypeError, match="answer must be a number, got True"):
        capstone_exercises.check_hospital_variance(
            total_sigma=1.0, threshold=1, answer=True
        )
    with pytest.raises(ValueError, match="answer must be a finite number, got nan"):
        capstone_exercises.check_hospital_variance(
            total_sigma=1.0, threshold=2, answer=math.nan
        )


# check_noise_left


def test_noise_left_target_met_passes(capsys):
    # 10 hospitals, threshold 4, 2 dropped, 1 colluding: 7 honest parts.
    assert capstone_exercises.check_noise_left(
        n_hospitals=10,
        threshold=4,
        dropped=2,
        colluding=1,
        answer=(math.sqrt(7 / 4), True),
    )
    out = capsys.readouterr().out
    assert out.startswith("Correct:")
    assert "7 honest parts leave 1.323 sigma, which still meets" in out


def test_noise_left_target_missed_passes(capsys):
    # 6 hospitals, threshold 4, 2 dropped, 2 colluding: 2 honest parts.
    assert capstone_exercises.check_noise_left(
        n_hospitals=6,
        threshold=4,
        dropped=2,
        colluding=2,
        answer=[np.float64(math.sqrt(0.5)), np.bool_(False)],
    )
    assert "falls short of the target" in capsys.readouterr().out


def test_noise_left_all_colluding_passes(capsys):
    assert capstone_exercises.check_noise_left(
        n_hospitals=4, threshold=2, dropped=0, colluding=4, answer=(0.0, False)
    )
    assert capsys.readouterr().out.startswith("Correct:")


# Wrong ratios for 10 hospitals, threshold 4, 2 dropped and 1 colluding, whose
# right ratio is sqrt(7 / 4), with the hint each one gets.
WRONG_RATIOS = [
    (math.sqrt(8 / 4), True, "colluding hospitals tell the server"),
    (math.sqrt(9 / 4), True, "drops out before sending"),
    (math.sqrt(10 / 4), True, "counts every hospital's noise"),
    (7 / 4, True, "ratio of the variances"),
    (0.3, False, "secret from the server"),
]


@pytest.mark.parametrize(("ratio", "met", "hint"), WRONG_RATIOS)
def test_noise_left_wrong_ratio_fails(capsys, ratio, met, hint):
    assert not capstone_exercises.check_noise_left(
        n_hospitals=10, threshold=4, dropped=2, colluding=1, answer=(ratio, met)
    )
    assert hint in capsys.readouterr().out


def test_noise_left_wrong_flag_fails(capsys):
    assert not capstone_exercises.check_noise_left(
        n_hospitals=6,
        threshold=4,
        dropped=2,
        colluding=2,
        answer=(math.sqrt(0.5), True),
    )
    assert "compare your ratio with 1" in capsys.readouterr().out


def test_noise_left_failed_round_raises():
    with pytest.raises(ValueError, match="fewer than the threshold 4: the round fails"):
        capstone_exercises.check_noise_left(
            n_hospitals=6, threshold=4, dropped=3, colluding=0, answer=(0.0, False)
        )


def test_noise_left_bad_counts_raise():
    def check(**settings):
        values = dict(n_hospitals=10, threshold=4, dropped=2, colluding=1)
        values.update(settings)
        capstone_exercises.check_noise_left(**values, answer=(1.0, True))

    with pytest.raises(ValueError, match="threshold must lie in 1..n_hospitals"):
        check(threshold=11)
    with pytest.raises(ValueError, match="dropped must be >= 0, got -1"):
        check(dropped=-1)
    with pytest.raises(ValueError, match="colluding must be >= 0, got -2"):
        check(colluding=-2)
    with pytest.raises(ValueError, match="dropped must be at most the 10 hospitals"):
        check(threshold=1, dropped=11)
    with pytest.raises(ValueError, match="at most the 8 survivors, got 9"):
        check(colluding=9)
    with pytest.raises(TypeError, match="n_hospitals must be an int, got '10'"):
        check(n_hospitals="10")


def test_noise_left_bad_answer_raises():
    settings = dict(n_hospitals=10, threshold=4, dropped=2, colluding=1)
    with pytest.raises(TypeError, match="answer must be a pair"):
        capstone_exercises.check_noise_left(**settings, answer=1.32)
    with pytest.raises(TypeError, match="answer must be a pair"):
        capstone_exercises.check_noise_left(**settings, answer=(1.32, True, 0))
    with pytest.raises(TypeError, match="target_met must be a bool, True or False"):
        capstone_exercises.check_noise_left(**settings, answer=(1.32, 1))
    with pytest.raises(TypeError, match="ratio must be a number, got 'big'"):
        capstone_exercises.check_noise_left(**settings, answer=("big", True))


# check_epsilon_without_sampling


def test_epsilon_without_sampling_reference_passes(capsys):
    assert capstone_exercises.check_epsilon_without_sampling(reference_epsilon)
    assert capsys.readouterr().out.startswith("Correct:")


def test_epsilon_with_sampling_fails(capsys):
    def amplified(*, noise_multiplier, rounds, delta):
        return epsilon_spent(
            noise_multiplier=noise_multiplier,
            sample_rate=0.5,
            steps=rounds,
            delta=delta,
        )

    assert not capstone_exercises.check_epsilon_without_sampling(amplified)
    out = capsys.readouterr().out
    assert out.startswith("Not yet:")
    assert "sampling amplifies nothing" in out


def test_epsilon_one_round_fails(capsys):
    def one_round(*, noise_multiplier, rounds, delta):
        return reference_epsilon(
            noise_multiplier=noise_multiplier, rounds=1, delta=delta
        )

    assert not capstone_exercises.check_epsilon_without_sampling(one_round)
    out = capsys.readouterr().out
    assert "rounds=20" in out
    assert "the epsilon of a single round" in out


def test_epsilon_too_large_fails(capsys):
    def doubled(*, noise_multiplier, rounds, delta):
        return 2 * reference_epsilon(
            noise_multiplier=noise_multiplier, rounds=rounds, delta=delta
        )

    assert not capstone_exercises.check_epsilon_without_sampling(doubled)
    out = capsys.readouterr().out
    assert "your epsilon is 9.4570" in out
    assert "step one RDPAccountant once per round" in out


def test_epsilon_raising_function_fails(capsys):
    def broken(*, noise_multiplier, rounds, delta):
        raise ZeroDivisionError("division by zero")

    assert not capstone_exercises.check_epsilon_without_sampling(broken)
    assert "raised ZeroDivisionError: division by zero" in capsys.readouterr().out


def test_epsilon_pair_fails(capsys):
    def pair(*, noise_multiplier, rounds, delta):
        return (1.0, 2.0)

    assert not capstone_exercises.check_epsilon_without_sampling(pair)
    assert "Return epsilon as one number" in capsys.readouterr().out


def test_epsilon_wrong_argument_names_fail(capsys):
    def positional(noise, steps, delta):
        return 0.0

    assert not capstone_exercises.check_epsilon_without_sampling(positional)
    assert "raised TypeError" in capsys.readouterr().out


# check_what_protects


def test_what_protects_right_passes(capsys):
    assert capstone_exercises.check_what_protects(RIGHT_PROTECTIONS)
    assert capsys.readouterr().out.startswith("Correct:")


def test_what_protects_lists_and_case_pass(capsys):
    answer = {
        key.upper(): sorted(value, reverse=True)
        for key, value in RIGHT_PROTECTIONS.items()
    }
    answer["THE SUM OF THE UPDATES, READ BY THE SERVER"] = ("Differential Privacy ",)
    assert capstone_exercises.check_what_protects(answer)
    assert capsys.readouterr().out.startswith("Correct:")


def test_what_protects_sum_credits_secure_aggregation(capsys):
    answer = dict(RIGHT_PROTECTIONS)
    answer["the sum of the updates, read by the server"] = {
        "differential privacy",
        "secure aggregation",
    }
    assert not capstone_exercises.check_what_protects(answer)
    out = capsys.readouterr().out
    assert "'the sum of the updates, read by the server': you credit" in out
    assert "what unmasking gives the server" in out
    assert "one hospital's update" not in out


def test_what_protects_update_misses_differential_privacy(capsys):
    answer = dict(RIGHT_PROTECTIONS)
    answer["one hospital's update, read by the server"] = ["secure aggregation"]
    assert not capstone_exercises.check_what_protects(answer)
    out = capsys.readouterr().out
    assert "a defence you left out also acts here" in out
    assert "training added noise before anything left it" in out


def test_what_protects_histograms_credit_dp(capsys):
    answer = dict(RIGHT_PROTECTIONS)
    answer["the training-set sizes and label histograms a hospital publishes"] = {
        "differential privacy"
    }
    assert not capstone_exercises.check_what_protects(answer)
    assert "pass through training, noise or the protocol" in capsys.readouterr().out


def test_what_protects_swapped_defence_fails(capsys):
    answer = dict(RIGHT_PROTECTIONS)
    answer["membership of an image, read off the released model"] = {
        "secure aggregation"
    }
    assert not capstone_exercises.check_what_protects(answer)
    out = capsys.readouterr().out
    assert "you credit a defence that does not act here and leave out one" in out
    assert "whether masking changes the model" in out


def test_what_protects_hint_hides_right_set(capsys):
    answer = {key: set() for key in RIGHT_PROTECTIONS}
    assert not capstone_exercises.check_what_protects(answer)
    out = capsys.readouterr().out
    assert out.count("a defence you left out") == 3
    assert "{'differential privacy'}" not in out
    assert "frozenset" not in out


def test_what_protects_missing_key_fails(capsys):
    answer = dict(RIGHT_PROTECTIONS)
    del answer["the sum of the updates, read by the server"]
    assert not capstone_exercises.check_what_protects(answer)
    out = capsys.readouterr().out
    assert out.startswith("Not yet:")
    assert "the sum of the updates, read by the server" in out


def test_what_protects_exposures_match_keys():
    assert set(capstone_exercises.EXPOSURES) == set(RIGHT_PROTECTIONS)
    assert capstone_exercises.DEFENCES == ("differential privacy", "secure aggregation")


def test_what_protects_bad_answers_raise():
    with pytest.raises(TypeError, match="answer must be a dict"):
        capstone_exercises.check_what_protects([("a", "b")])
    with pytest.raises(ValueError, match="Unknown exposure 'the model'"):
        capstone_exercises.check_what_protects({"the model": set()})
    with pytest.raises(ValueError, match="Use one of .*label histograms"):
        capstone_exercises.check_what_protects({"the model": set()})

    answer = dict(RIGHT_PROTECTIONS)
    answer["the sum of the updates, read by the server"] = {"encryption"}
    with pytest.raises(ValueError, match="Unknown defence 'encryption'"):
        capstone_exercises.check_what_protects(answer)

    answer["the sum of the updates, read by the server"] = "differential privacy"
    with pytest.raises(TypeError, match="must be a set, list or tuple"):
        capstone_exercises.check_what_protects(answer)

    answer = dict(RIGHT_PROTECTIONS)
    answer["THE SUM OF THE UPDATES, READ BY THE SERVER"] = set()
    with pytest.raises(ValueError, match="is given twice"):
        capstone_exercises.check_what_protects(answer)


def test_hospital_variance_negative_fails(capsys):
    assert not capstone_exercises.check_hospital_variance(
        total_sigma=1.5, threshold=7, answer=-0.3214
    )
    assert "a variance is positive" in capsys.readouterr().out


def test_hospital_variance_tiny_zero_fails():
    assert not capstone_exercises.check_hospital_variance(
        total_sigma=1e-7, threshold=3, answer=0.0
    )


def test_hospital_variance_huge_answer_raises():
    with pytest.raises(ValueError, match="finite"):
        capstone_exercises.check_hospital_variance(
            total_sigma=1.5, threshold=7, answer=10**400
        )


@pytest.mark.parametrize("returned", ["4.7285", True, -1.0])
def test_epsilon_bad_return_fails(capsys, returned):
    def bad(*, noise_multiplier, rounds, delta):
        return returned

    assert not capstone_exercises.check_epsilon_without_sampling(bad)
    out = capsys.readouterr().out
    assert out.startswith("Not yet:")
    assert "4.7285" not in out or returned == "4.7285"
