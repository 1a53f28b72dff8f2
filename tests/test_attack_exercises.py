"""Tests for the attacks notebook's checkers: right solutions pass, wrong ones fail."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import attack_exercises


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_label_from_update_reference_passes(capsys):
    def reference(update):
        return int(torch.argmax(update.delta["head.bias"]))

    assert attack_exercises.check_label_from_update(reference)
    assert capsys.readouterr().out.startswith("Correct:")


def test_label_from_update_wrong_sign_fails(capsys):
    def smallest_entry(update):
        return int(torch.argmin(update.delta["head.bias"]))

    assert not attack_exercises.check_label_from_update(smallest_entry)
    assert "positive entry" in capsys.readouterr().out


def test_auc_by_pairs_reference_passes():
    def reference(members, nonmembers):
        greater = (members[:, None] > nonmembers[None, :]).sum()
        equal = (members[:, None] == nonmembers[None, :]).sum()
        return (greater + 0.5 * equal) / (len(members) * len(nonmembers))

    assert attack_exercises.check_auc_by_pairs(reference)


def test_auc_by_pairs_without_ties_fails(capsys):
    def ignores_ties(members, nonmembers):
        greater = (members[:, None] > nonmembers[None, :]).sum()
        return greater / (len(members) * len(nonmembers))

    assert not attack_exercises.check_auc_by_pairs(ignores_ties)
    assert "half a pair" in capsys.readouterr().out


def test_dp_tpr_bound_right_and_wrong(capsys):
    epsilon, delta, fpr = 1.0, 1e-5, 0.01
    right = math.exp(epsilon) * fpr + delta

    assert attack_exercises.check_dp_tpr_bound(
        epsilon=epsilon, delta=delta, fpr=fpr, answer=right
    )
    assert not attack_exercises.check_dp_tpr_bound(
        epsilon=epsilon, delta=delta, fpr=fpr, answer=fpr
    )
    # At a high FPR the second inequality binds; the first alone is wrong.
    first_only = min(math.exp(epsilon) * 0.5 + delta, 1.0)
    capsys.readouterr()
    assert not attack_exercises.check_dp_tpr_bound(
        epsilon=epsilon, delta=delta, fpr=0.5, answer=first_only
    )
    assert "second inequality" in capsys.readouterr().out
    second = 1 - math.exp(-epsilon) * (1 - delta - 0.5)
    assert attack_exercises.check_dp_tpr_bound(
        epsilon=epsilon, delta=delta, fpr=0.5, answer=second
    )


def test_local_steps_right_and_wrong(capsys):
    assert attack_exercises.check_local_steps(
        n_images=10, batch_size=4, local_epochs=2, answer=6
    )
    capsys.readouterr()
    assert not attack_exercises.check_local_steps(
        n_images=10, batch_size=4, local_epochs=2, answer=4
    )
    assert "smaller batch" in capsys.readouterr().out
    assert not attack_exercises.check_local_steps(
        n_images=10, batch_size=4, local_epochs=2, answer=20
    )
