"""Tests for the differential-privacy notebook's exercise checkers."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant

from helpers.privacy import epsilon_spent
from helpers.privacy_exercises import (
    check_affordable_rounds,
    check_epsilon_over_rounds,
    check_lesion_guarantee,
    check_levers,
)


def one_accountant(*, noise_multiplier, sample_rate, steps_per_round, rounds, delta):
    accountant = RDPAccountant()
    for _ in range(rounds * steps_per_round):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


def reset_every_round(*, noise_multiplier, sample_rate, steps_per_round, rounds, delta):
    for _ in range(rounds):
        accountant = RDPAccountant()
        for _ in range(steps_per_round):
            accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


def test_epsilon_checker_accepts_one_accountant(capsys):
    assert check_epsilon_over_rounds(one_accountant) is True
    assert capsys.readouterr().out.startswith("Correct:")


def test_epsilon_checker_names_reset_accountant(capsys):
    assert check_epsilon_over_rounds(reset_every_round) is False
    output = capsys.readouterr().out
    assert output.startswith("Not yet:")
    assert "the accountant was reset" in output


def test_epsilon_checker_rejects_other_answers(capsys):
    assert check_epsilon_over_rounds(lambda **settings: None) is False
    assert "step one RDPAccountant" in capsys.readouterr().out


def test_affordable_rounds_checker():
    settings = dict(
        noise_multiplier=1.0,
        sample_rate=0.05,
        steps_per_round=20,
        target_epsilon=4.0,
        delta=1e-5,
    )
    rounds = 0
    while (
        epsilon_spent(
            noise_multiplier=1.0, sample_rate=0.05, steps=(rounds + 1) * 20, delta=1e-5
        )
        <= 4.0
    ):
        rounds += 1
    assert rounds > 1

    assert check_affordable_rounds(answer=rounds, **settings) is True
    assert check_affordable_rounds(answer=rounds + 1, **settings) is False
    assert check_affordable_rounds(answer=rounds - 1, **settings) is False


def test_affordable_rounds_rejects_unbounded_budget():
    with pytest.raises(ValueError, match="More than 100000 rounds fit"):
        check_affordable_rounds(
            noise_multiplier=1e4,
            sample_rate=0.001,
            steps_per_round=1,
            target_epsilon=5.0,
            delta=1e-5,
            answer=1,
        )


def test_levers_checker(capsys):
    right = {
        "noise_multiplier": "down",
        "sample_rate": "up",
        "rounds": "up",
        "max_grad_norm": "same",
        "delta": "down",
    }
    assert check_levers(right) is True
    assert check_levers({**right, "max_grad_norm": "down"}) is False
    assert "cancels out of epsilon" in capsys.readouterr().out
    assert check_levers({"rounds": "up"}) is False
    assert "give a direction for" in capsys.readouterr().out


def test_lesion_guarantee_checker(capsys):
    expected = (3 * 0.5, 3 * math.exp(2 * 0.5) * 1e-5)
    assert (
        check_lesion_guarantee(
            epsilon=0.5, delta=1e-5, images_per_lesion=3, answer=expected
        )
        is True
    )
    assert (
        check_lesion_guarantee(
            epsilon=0.5, delta=1e-5, images_per_lesion=3, answer=(1.5, 3e-5)
        )
        is False
    )
    assert "k * e^((k - 1) * epsilon)" in capsys.readouterr().out
    assert (
        check_lesion_guarantee(
            epsilon=0.5, delta=1e-5, images_per_lesion=3, answer=(0.5, 1e-5)
        )
        is False
    )
