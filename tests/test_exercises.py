"""Tests for the exercise checkers: right answers pass, wrong answers fail."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import exercises
from helpers.classes import CLASSES

MEL = CLASSES.index("mel")
NV = CLASSES.index("nv")


class FakeHospital:
    def __init__(self, name, histogram):
        self.name = name
        self.label_histogram = np.array(histogram)


def test_always_melanoma_right_and_wrong(capsys):
    labels = np.array([MEL, NV, NV, 0])

    assert exercises.check_always_melanoma(
        labels, accuracy=0.25, balanced_accuracy=1 / 3
    )
    assert not exercises.check_always_melanoma(
        labels, accuracy=0.5, balanced_accuracy=1 / 3
    )
    assert not exercises.check_always_melanoma(
        labels, accuracy=0.25, balanced_accuracy=1 / 7
    )
    assert "Not yet" in capsys.readouterr().out


def test_leaked_counter_reference_passes():
    def reference(split, lesion_ids):
        train = set(lesion_ids[split == "train"])
        return sum(lesion in train for lesion in lesion_ids[split == "test"])

    assert exercises.check_leaked_test_images(reference)


def test_leaked_counter_wrong_fails():
    def counts_lesions_not_images(split, lesion_ids):
        train = set(lesion_ids[split == "train"])
        return len(set(lesion_ids[split == "test"]) & train)

    assert not exercises.check_leaked_test_images(counts_lesions_not_images)


def test_site_with_most_melanoma():
    sites = np.array(["a", "a", "b", "b", "b", "b"])
    labels = np.array([MEL, NV, MEL, MEL, NV, NV])
    # Site a: 1 of 2 is melanoma; site b: 2 of 4. Both are 50%, so both pass.
    assert exercises.check_site_with_most_melanoma(sites, labels, "a")
    assert exercises.check_site_with_most_melanoma(sites, labels, "b")

    labels = np.array([MEL, NV, MEL, NV, NV, NV])
    assert exercises.check_site_with_most_melanoma(sites, labels, "a")
    assert not exercises.check_site_with_most_melanoma(sites, labels, "b")


def test_site_with_most_melanoma_no_sites():
    assert not exercises.check_site_with_most_melanoma(None, np.array([MEL]), "a")


def test_rarest_public_count():
    hospitals = [
        FakeHospital("north", [0, 5, 3, 0, 9, 40, 2]),
        FakeHospital("south", [1, 0, 4, 0, 7, 30, 0]),
    ]

    assert exercises.check_rarest_public_count(
        hospitals, hospital="south", diagnosis="akiec", count=1
    )
    assert not exercises.check_rarest_public_count(
        hospitals, hospital="north", diagnosis="vasc", count=2
    )
    assert not exercises.check_rarest_public_count(
        hospitals, hospital="north", diagnosis="akiec", count=1
    )
    assert not exercises.check_rarest_public_count(
        hospitals, hospital="east", diagnosis="akiec", count=1
    )


def test_label_skew_reference_passes():
    def reference(table):
        counts = table[list(CLASSES)]
        mix = counts.div(counts.sum(axis=1), axis=0)
        pooled = counts.sum() / counts.to_numpy().sum()
        return 0.5 * (mix - pooled).abs().sum(axis=1)

    assert exercises.check_label_skew(reference)


def test_label_skew_without_half_fails():
    def full_l1(table):
        counts = table[list(CLASSES)]
        mix = counts.div(counts.sum(axis=1), axis=0)
        pooled = counts.sum() / counts.to_numpy().sum()
        return (mix - pooled).abs().sum(axis=1)

    assert not exercises.check_label_skew(full_l1)


def test_label_skew_disjoint_value():
    table = pd.DataFrame(
        [[5, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 5, 0]], columns=CLASSES
    )
    skew = exercises._reference_label_skew(table)
    assert skew.tolist() == pytest.approx([0.5, 0.5])


def test_more_skewed_alpha():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), size=800)
    lesion_ids = np.array([f"lesion {i // 2}" for i in range(800)])

    assert exercises.check_more_skewed_alpha(labels, lesion_ids, 0.05)
    assert not exercises.check_more_skewed_alpha(labels, lesion_ids, 100)


def test_fedavg_reference_passes():
    def reference(global_state, updates):
        total = sum(u.n_samples for u in updates)
        return {
            key: value + sum(u.n_samples / total * u.delta[key] for u in updates)
            for key, value in global_state.items()
        }

    assert exercises.check_fedavg(reference)


def test_fedavg_unweighted_fails(capsys):
    def unweighted(global_state, updates):
        return {
            key: value + sum(u.delta[key] for u in updates) / len(updates)
            for key, value in global_state.items()
        }

    assert not exercises.check_fedavg(unweighted)
    assert "weight each" in capsys.readouterr().out


def test_fedavg_missing_key_fails():
    def one_key(global_state, updates):
        return {"conv.weight": global_state["conv.weight"]}

    assert not exercises.check_fedavg(one_key)


def test_biggest_gain():
    table = pd.DataFrame(
        {"local only": [0.5, 0.2, 0.4], "federated": [0.6, 0.6, 0.3]},
        index=["a", "b", "c"],
    )

    assert exercises.check_biggest_gain(table, "b")
    assert not exercises.check_biggest_gain(table, "a")


def test_sampled_budget():
    assert exercises.check_sampled_budget(
        n_hospitals=4, fraction=0.5, rounds=20, updates=40, passes=10
    )
    # Five hospitals at fraction 0.5: 2.5 rounds up to 3 per round.
    assert exercises.check_sampled_budget(
        n_hospitals=5, fraction=0.5, rounds=10, updates=30, passes=6
    )
    assert not exercises.check_sampled_budget(
        n_hospitals=4, fraction=0.5, rounds=20, updates=80, passes=20
    )
    assert not exercises.check_sampled_budget(
        n_hospitals=4, fraction=0.5, rounds=20, updates=40, passes=20
    )
