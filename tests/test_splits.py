"""Tests for the lesion-grouped split and the partitions into hospitals."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from helpers.classes import CLASSES
from helpers.splits import (
    MAX_DRAWS,
    SPLITS,
    Partition,
    label_table,
    natural_partition,
    partition_by_site,
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
    split_by_lesion,
)

# Roughly HAM10000's class frequencies (akiec .. vasc) and images per lesion.
CLASS_FREQUENCIES = np.array([327, 514, 1099, 115, 1113, 6705, 142]) / 10015
IMAGES_PER_LESION = {1: 0.74, 2: 0.19, 3: 0.065, 4: 0.005}


def make_lesions(n_lesions: int = 1500, seed: int = 0):
    """Return labels and lesion ids of a HAM10000-like set of images."""
    rng = np.random.default_rng(seed)
    lesion_label = rng.choice(len(CLASSES), size=n_lesions, p=CLASS_FREQUENCIES)
    sizes = rng.choice(
        list(IMAGES_PER_LESION), size=n_lesions, p=list(IMAGES_PER_LESION.values())
    )
    labels = np.repeat(lesion_label, sizes)
    lesion_ids = np.repeat([f"HAM_{k:07d}" for k in range(n_lesions)], sizes)
    return labels, lesion_ids


@pytest.fixture(scope="module")
def lesions():
    return make_lesions()


def class_mix(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=len(CLASSES)) / labels.size


def mean_total_variation(partition: Partition, labels: np.ndarray) -> float:
    """Mean over hospitals of the total-variation distance to the global mix."""
    table = label_table(partition, labels)
    counts = table[list(CLASSES)].to_numpy()
    mixes = counts / counts.sum(axis=1, keepdims=True)
    return float(0.5 * np.abs(mixes - class_mix(labels)).sum(axis=1).mean())


def assert_groups_whole(assignment: np.ndarray, groups: np.ndarray) -> None:
    per_group = pd.Series(assignment).groupby(groups).nunique()
    assert per_group.max() == 1, "a group was split across parts"


# split_by_lesion


def test_split_values_and_dtype(lesions):
    labels, lesion_ids = lesions
    split = split_by_lesion(labels, lesion_ids)
    assert split.shape == labels.shape
    assert split.dtype.kind == "U"
    assert set(np.unique(split)) == set(SPLITS)


def test_split_keeps_lesions_whole(lesions):
    labels, lesion_ids = lesions
    split = split_by_lesion(labels, lesion_ids, seed=3)
    assert_groups_whole(split, lesion_ids)


def test_split_fractions_respected(lesions):
    labels, lesion_ids = lesions
    fractions = (0.6, 0.1, 0.3)
    split = split_by_lesion(labels, lesion_ids, fractions=fractions)
    for name, fraction in zip(SPLITS, fractions, strict=True):
        assert np.mean(split == name) == pytest.approx(fraction, abs=0.01)


def test_split_stratifies_by_diagnosis(lesions):
    labels, lesion_ids = lesions
    split = split_by_lesion(labels, lesion_ids)
    overall = class_mix(labels)
    for name in SPLITS:
        part = class_mix(labels[split == name])
        assert np.abs(part - overall).max() < 0.01, name


def test_split_rare_class_exact_shares():
    # 20 single-image lesions of class 0 among 400 of class 1. Targets for class 0
    # are 14 / 3 / 3 images, and whole single-image lesions can meet them exactly.
    labels = np.array([0] * 20 + [1] * 400)
    lesion_ids = np.arange(labels.size)
    split = split_by_lesion(labels, lesion_ids)
    rare = split[labels == 0]
    assert np.sum(rare == "train") == 14
    assert np.sum(rare == "val") == 3
    assert np.sum(rare == "test") == 3


def test_split_strata_balance_sites():
    # Site "single" has only one-image lesions, site "multi" lesions of 1-6
    # images: without strata the greedy split fills val/test from "single".
    multi_labels, multi_ids = make_lesions(600, seed=1)
    rng = np.random.default_rng(2)
    single_labels = rng.choice(len(CLASSES), size=900, p=CLASS_FREQUENCIES)
    single_ids = np.array([f"single_{k}" for k in range(900)])
    labels = np.concatenate([multi_labels, single_labels])
    lesion_ids = np.concatenate([multi_ids, single_ids])
    sites = np.array(["multi"] * multi_labels.size + ["single"] * 900)

    split = split_by_lesion(labels, lesion_ids, seed=0, strata=sites)

    for site in ("multi", "single"):
        held_out = np.mean(split[sites == site] != "train")
        assert held_out == pytest.approx(0.3, abs=0.02), site
    assert_groups_whole(split, lesion_ids)


def test_split_strata_length_mismatch(lesions):
    labels, lesion_ids = lesions
    with pytest.raises(ValueError, match="strata"):
        split_by_lesion(labels, lesion_ids, strata=np.array(["a"]))


def test_split_deterministic_from_seed(lesions):
    labels, lesion_ids = lesions
    first = split_by_lesion(labels, lesion_ids, seed=7)
    again = split_by_lesion(labels, lesion_ids, seed=7)
    other = split_by_lesion(labels, lesion_ids, seed=8)
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)


def test_split_three_lesions_fill_every_side():
    # Extreme fractions would leave val and test empty; each still gets a lesion.
    labels = np.array([0, 0, 0, 0])
    lesion_ids = np.array(["a", "a", "b", "c"])
    split = split_by_lesion(labels, lesion_ids, fractions=(0.98, 0.01, 0.01))
    assert set(split) == set(SPLITS)
    assert split[0] == split[1]


def test_split_mixed_label_lesion_stays_whole():
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 0, 1, 0])
    lesion_ids = np.array(["x", "x", "x", "a", "b", "c", "d", "e", "f", "g"])
    split = split_by_lesion(labels, lesion_ids)
    assert len(set(split[:3])) == 1


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.7, 0.2, 0.2), "sum to 1"),
        ((0.8, 0.2, 0.0), "positive"),
        ((1.2, -0.1, -0.1), "positive"),
        ((0.5, 0.5), "3 numbers"),
        ((float("nan"), 0.5, 0.5), "positive"),
    ],
)
def test_split_rejects_bad_fractions(lesions, fractions, message):
    labels, lesion_ids = lesions
    with pytest.raises(ValueError, match=message):
        split_by_lesion(labels, lesion_ids, fractions=fractions)


def test_split_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="labels has 4, lesion_ids has 3"):
        split_by_lesion(np.zeros(4, dtype=int), np.arange(3))


def test_split_rejects_too_few_lesions():
    with pytest.raises(ValueError, match="at least 3 lesions"):
        split_by_lesion(np.zeros(5, dtype=int), np.array(["a"] * 3 + ["b"] * 2))


def test_split_rejects_empty_input():
    with pytest.raises(ValueError, match="empty"):
        split_by_lesion(np.array([], dtype=int), np.array([], dtype=str))


def test_split_rejects_missing_lesion_ids():
    lesion_ids = np.array(["a", None, "c", "d"], dtype=object)
    with pytest.raises(ValueError, match="missing values"):
        split_by_lesion(np.zeros(4, dtype=int), lesion_ids)


def test_split_rejects_2d_labels():
    with pytest.raises(ValueError, match="1-D"):
        split_by_lesion(np.zeros((4, 1), dtype=int), np.arange(4))


# Partition


def test_partition_indices_by_index_and_name():
    partition = Partition(("a", "b", "c"), np.array([2, 0, 2, 1, 0]), "hand-made")
    np.testing.assert_array_equal(partition.indices(0), [1, 4])
    np.testing.assert_array_equal(partition.indices("c"), [0, 2])
    np.testing.assert_array_equal(partition.indices(np.int64(1)), [3])
    assert partition.n_hospitals == 3
    np.testing.assert_array_equal(partition.sizes, [2, 1, 2])


def test_partition_assignment_read_only():
    source = np.array([0, 1, 1])
    partition = Partition(("a", "b"), source, "hand-made")
    source[0] = 1
    assert partition.assignment[0] == 0
    with pytest.raises(ValueError, match="read-only"):
        partition.assignment[0] = 1


def test_partition_indices_rejects_unknown():
    partition = Partition(("a", "b"), np.array([0, 1]), "hand-made")
    with pytest.raises(ValueError, match="Unknown hospital 'z'"):
        partition.indices("z")
    with pytest.raises(ValueError, match="out of range"):
        partition.indices(2)
    with pytest.raises(ValueError, match="out of range"):
        partition.indices(-1)
    with pytest.raises(TypeError, match="int index or a str name"):
        partition.indices(True)


def test_partition_rejects_bad_fields():
    with pytest.raises(ValueError, match="0..1"):
        Partition(("a", "b"), np.array([0, 2]), "bad")
    with pytest.raises(ValueError, match="unique"):
        Partition(("a", "a"), np.array([0, 1]), "bad")
    with pytest.raises(TypeError, match="integer"):
        Partition(("a", "b"), np.array([0.0, 1.0]), "bad")
    with pytest.raises(ValueError, match="at least one"):
        Partition((), np.array([], dtype=int), "bad")


# partition_by_site


def test_by_site_names_and_assignment():
    sites = np.array(["vienna_dias", "rosendahl", "vidir_modern", "rosendahl"])
    partition = partition_by_site(sites)
    assert partition.names == ("rosendahl", "vidir_modern", "vienna_dias")
    np.testing.assert_array_equal(partition.assignment, [2, 0, 1, 0])
    assert partition.description == "acquisition site"


def test_by_site_keeps_lesion_at_one_site():
    # Lesion "L" has two images at site b and one at site a: all three go to b.
    sites = np.array(["a", "b", "b", "a", "b"])
    groups = np.array(["L", "L", "L", "M", "N"])
    partition = partition_by_site(sites, groups=groups)
    np.testing.assert_array_equal(partition.assignment, [1, 1, 1, 0, 1])
    assert "1 lesion(s) seen at several sites" in partition.description


def test_by_site_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        partition_by_site(np.array([], dtype=str))
    with pytest.raises(ValueError, match="missing values"):
        partition_by_site(np.array(["a", None], dtype=object))
    with pytest.raises(ValueError, match="sites has 2, groups has 3"):
        partition_by_site(np.array(["a", "b"]), groups=np.arange(3))


# partition_iid


def test_iid_near_equal_sizes(lesions):
    labels, lesion_ids = lesions
    partition = partition_iid(labels, 5, groups=lesion_ids)
    sizes = partition.sizes
    assert partition.names == tuple(f"hospital {k}" for k in range(5))
    # Each class is dealt to the hospital with the fewest of it, so per class the
    # sizes differ by at most one lesion (4 images): 7 classes x 4 images in all.
    assert sizes.max() - sizes.min() <= 28
    assert sizes.sum() == labels.size


def test_iid_similar_label_mixes(lesions):
    labels, lesion_ids = lesions
    partition = partition_iid(labels, 5, groups=lesion_ids)
    assert mean_total_variation(partition, labels) < 0.02


def test_iid_keeps_groups_whole(lesions):
    labels, lesion_ids = lesions
    partition = partition_iid(labels, 6, groups=lesion_ids, seed=2)
    assert_groups_whole(partition.assignment, lesion_ids)


def test_iid_one_group_per_hospital():
    labels = np.array([0, 0, 1, 1, 1, 2])
    groups = np.array(["a", "a", "b", "c", "c", "d"])
    partition = partition_iid(labels, 4, groups=groups)
    assert np.all(partition.sizes > 0)
    assert_groups_whole(partition.assignment, groups)


def test_iid_deterministic_from_seed(lesions):
    labels, lesion_ids = lesions
    first = partition_iid(labels, 4, groups=lesion_ids, seed=1)
    again = partition_iid(labels, 4, groups=lesion_ids, seed=1)
    other = partition_iid(labels, 4, groups=lesion_ids, seed=2)
    np.testing.assert_array_equal(first.assignment, again.assignment)
    assert np.any(first.assignment != other.assignment)


def test_iid_without_groups_uses_images():
    labels = np.array([0, 1, 0, 1, 0, 1])
    partition = partition_iid(labels, 3)
    np.testing.assert_array_equal(partition.sizes, [2, 2, 2])
    table = label_table(partition, labels)
    np.testing.assert_array_equal(table["akiec"], [1, 1, 1])


@pytest.mark.parametrize(
    ("n_hospitals", "error", "message"),
    [
        (0, ValueError, "at least 1"),
        (-2, ValueError, "at least 1"),
        (2.0, TypeError, "must be an int"),
        (True, TypeError, "must be an int"),
        (5, ValueError, "only 4 lesions"),
    ],
)
def test_iid_rejects_bad_n_hospitals(n_hospitals, error, message):
    labels = np.array([0, 0, 1, 1, 2])
    groups = np.array(["a", "a", "b", "c", "d"])
    with pytest.raises(error, match=message):
        partition_iid(labels, n_hospitals, groups=groups)


def test_iid_rejects_bad_arrays():
    with pytest.raises(ValueError, match="labels has 3, groups has 2"):
        partition_iid(np.zeros(3, dtype=int), 2, groups=np.arange(2))
    with pytest.raises(ValueError, match="empty"):
        partition_iid(np.array([], dtype=int), 2)
    with pytest.raises(ValueError, match="NaN"):
        partition_iid(np.array([0.0, np.nan]), 1)


# partition_dirichlet


def test_dirichlet_small_alpha_more_skew(lesions):
    labels, lesion_ids = lesions
    skew = {
        alpha: np.mean(
            [
                mean_total_variation(
                    partition_dirichlet(
                        labels, 5, alpha=alpha, groups=lesion_ids, seed=seed
                    ),
                    labels,
                )
                for seed in range(4)
            ]
        )
        for alpha in (0.1, 1.0, 100.0)
    }
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[0.1] > 0.4
    assert skew[100.0] < 0.1


def test_dirichlet_every_hospital_filled(lesions):
    labels, lesion_ids = lesions
    partition = partition_dirichlet(labels, 8, alpha=0.1, groups=lesion_ids)
    assert np.all(partition.sizes > 0)
    assert partition.sizes.sum() == labels.size
    assert partition.description == "Dirichlet label skew, alpha=0.1"


def test_dirichlet_keeps_groups_whole(lesions):
    labels, lesion_ids = lesions
    partition = partition_dirichlet(labels, 4, alpha=0.3, groups=lesion_ids)
    assert_groups_whole(partition.assignment, lesion_ids)


def test_dirichlet_deterministic_from_seed(lesions):
    labels, lesion_ids = lesions
    first = partition_dirichlet(labels, 4, alpha=0.5, groups=lesion_ids, seed=5)
    again = partition_dirichlet(labels, 4, alpha=0.5, groups=lesion_ids, seed=5)
    other = partition_dirichlet(labels, 4, alpha=0.5, groups=lesion_ids, seed=6)
    np.testing.assert_array_equal(first.assignment, again.assignment)
    assert np.any(first.assignment != other.assignment)


def test_dirichlet_single_hospital_gets_all():
    labels = np.array([0, 1, 2, 3])
    partition = partition_dirichlet(labels, 1, alpha=0.5)
    np.testing.assert_array_equal(partition.assignment, [0, 0, 0, 0])


def test_dirichlet_impossible_request_raises():
    # Three lesions of one class, three hospitals and alpha=0.01: each draw gives
    # one hospital almost the whole class, so some hospital stays empty.
    labels = np.zeros(3, dtype=int)
    with pytest.raises(ValueError, match="Raise alpha or lower n_hospitals"):
        partition_dirichlet(labels, 3, alpha=0.01)
    with pytest.raises(ValueError, match=f"{MAX_DRAWS} draws"):
        partition_dirichlet(labels, 3, alpha=0.01)


@pytest.mark.parametrize(
    ("alpha", "error"),
    [
        (0.0, ValueError),
        (-1.0, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("0.5", TypeError),
        (True, TypeError),
    ],
)
def test_dirichlet_rejects_bad_alpha(alpha, error):
    with pytest.raises(error, match="alpha"):
        partition_dirichlet(np.array([0, 1, 0, 1]), 2, alpha=alpha)


def test_dirichlet_rejects_more_hospitals_than_images():
    with pytest.raises(ValueError, match="only 3 lesions"):
        partition_dirichlet(np.array([0, 1, 2]), 4, alpha=1.0)


# partition_quantity_skew


def size_spread(partition: Partition) -> float:
    """Coefficient of variation of the hospital sizes."""
    sizes = partition.sizes
    return float(sizes.std() / sizes.mean())


def test_quantity_small_alpha_more_spread(lesions):
    labels, lesion_ids = lesions
    spread = {
        alpha: np.mean(
            [
                size_spread(
                    partition_quantity_skew(
                        labels, 5, alpha=alpha, groups=lesion_ids, seed=seed
                    )
                )
                for seed in range(4)
            ]
        )
        for alpha in (0.3, 100.0)
    }
    assert spread[0.3] > 0.5
    assert spread[100.0] < 0.15


def test_quantity_keeps_label_mix(lesions):
    labels, lesion_ids = lesions
    partition = partition_quantity_skew(labels, 4, alpha=1.0, groups=lesion_ids, seed=1)
    overall = class_mix(labels)
    for hospital in range(partition.n_hospitals):
        members = partition.indices(hospital)
        if members.size < 200:
            continue  # A small hospital cannot match the mix of rare classes.
        mix = class_mix(labels[members])
        assert np.abs(mix - overall).max() < 0.05, partition.names[hospital]


def test_quantity_keeps_groups_whole(lesions):
    labels, lesion_ids = lesions
    partition = partition_quantity_skew(labels, 5, alpha=0.5, groups=lesion_ids)
    assert_groups_whole(partition.assignment, lesion_ids)
    assert np.all(partition.sizes > 0)
    assert partition.description == "quantity skew, alpha=0.5"


def test_quantity_impossible_request_raises():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="Raise alpha or lower n_hospitals"):
        partition_quantity_skew(labels, 4, alpha=0.01)


def test_quantity_rejects_bad_arguments():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="alpha"):
        partition_quantity_skew(labels, 2, alpha=0)
    with pytest.raises(ValueError, match="at least 1"):
        partition_quantity_skew(labels, 0, alpha=1.0)
    with pytest.raises(ValueError, match="only 4 lesions"):
        partition_quantity_skew(labels, 5, alpha=1.0)


# natural_partition


def test_natural_uses_sites_without_warning():
    sites = np.array(["b", "a", "b", "a"])
    labels = np.array([0, 1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        partition = natural_partition(sites, labels)
    assert partition.names == ("a", "b")
    np.testing.assert_array_equal(partition.assignment, [1, 0, 1, 0])
    assert partition.description == "acquisition site"


def test_natural_falls_back_to_dirichlet(lesions):
    labels, lesion_ids = lesions
    with pytest.warns(UserWarning, match="alpha=0.3 over 3 hospitals"):
        partition = natural_partition(
            None, labels, groups=lesion_ids, n_hospitals=3, alpha=0.3, seed=4
        )
    expected = partition_dirichlet(labels, 3, alpha=0.3, groups=lesion_ids, seed=4)
    np.testing.assert_array_equal(partition.assignment, expected.assignment)
    assert "alpha=0.3" in partition.description
    assert "no acquisition sites" in partition.description


def test_natural_rejects_mismatched_sites():
    with pytest.raises(ValueError, match="sites has 2, labels has 3"):
        natural_partition(np.array(["a", "b"]), np.array([0, 1, 2]))


# label_table


def test_label_table_hand_counts():
    partition = Partition(("north", "south"), np.array([0, 0, 1, 1, 1]), "test")
    labels = np.array([4, 5, 5, 5, 0])
    table = label_table(partition, labels)
    assert list(table.columns) == [*CLASSES, "total"]
    assert list(table.index) == ["north", "south"]
    assert table.loc["north", "mel"] == 1
    assert table.loc["north", "nv"] == 1
    assert table.loc["south", "nv"] == 2
    assert table.loc["south", "akiec"] == 1
    assert table.loc["south", "df"] == 0
    np.testing.assert_array_equal(table["total"], [2, 3])


def test_label_table_sums_match_counts(lesions):
    labels, lesion_ids = lesions
    partition = partition_dirichlet(labels, 4, alpha=0.5, groups=lesion_ids)
    table = label_table(partition, labels)
    np.testing.assert_array_equal(
        table[list(CLASSES)].sum(axis=0), np.bincount(labels, minlength=7)
    )
    np.testing.assert_array_equal(table["total"], partition.sizes)
    assert table["total"].sum() == labels.size


def test_label_table_mask_restricts(lesions):
    labels, lesion_ids = lesions
    split = split_by_lesion(labels, lesion_ids)
    partition = partition_iid(labels, 3, groups=lesion_ids)
    train = split == "train"
    table = label_table(partition, labels, mask=train)
    assert table["total"].sum() == train.sum()
    np.testing.assert_array_equal(
        table[list(CLASSES)].sum(axis=0), np.bincount(labels[train], minlength=7)
    )


def test_label_table_rejects_bad_input():
    partition = Partition(("a",), np.zeros(3, dtype=int), "test")
    with pytest.raises(ValueError, match="0..6"):
        label_table(partition, np.array([0, 7, 1]))
    with pytest.raises(ValueError, match="0..6"):
        label_table(partition, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="integer class indices"):
        label_table(partition, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="labels has 2, assignment has 3"):
        label_table(partition, np.array([0, 1]))
    with pytest.raises(TypeError, match="bool"):
        label_table(partition, np.array([0, 1, 1]), mask=np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="labels has 3, mask has 2"):
        label_table(partition, np.array([0, 1, 1]), mask=np.array([True, False]))


@pytest.mark.parametrize(
    ("partitioner", "alpha"),
    [(partition_dirichlet, 0.1), (partition_quantity_skew, 2.0)],
)
def test_train_mask_gives_every_hospital_training_images(partitioner, alpha):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=400)
    train_mask = np.zeros(400, dtype=bool)
    train_mask[:40] = True

    partition = partitioner(labels, 8, alpha=alpha, seed=2, train_mask=train_mask)

    counts = np.bincount(partition.assignment[train_mask], minlength=8)
    assert counts.min() >= 1
    assert counts.sum() == 40


def test_train_mask_changes_only_what_draw_is_kept():
    labels = np.random.default_rng(0).integers(0, 7, size=300)

    plain = partition_dirichlet(labels, 5, alpha=0.5, seed=4)
    masked = partition_dirichlet(
        labels, 5, alpha=0.5, seed=4, train_mask=np.ones(300, dtype=bool)
    )

    np.testing.assert_array_equal(plain.assignment, masked.assignment)


@pytest.mark.parametrize(
    ("train_mask", "message"),
    [
        (np.ones(5, dtype=bool), "one entry per image"),
        (np.ones(300, dtype=int), "bool array"),
        (np.zeros(300, dtype=bool), "no training image"),
    ],
)
def test_train_mask_rejects_bad_mask(train_mask, message):
    labels = np.random.default_rng(0).integers(0, 7, size=300)
    with pytest.raises(ValueError, match=message):
        partition_dirichlet(labels, 3, alpha=1.0, train_mask=train_mask)


def test_natural_fallback_passes_train_mask():
    labels = np.random.default_rng(0).integers(0, 7, size=400)
    train_mask = np.zeros(400, dtype=bool)
    train_mask[::20] = True

    with pytest.warns(UserWarning, match="alpha=0.1"):
        partition = natural_partition(
            None, labels, n_hospitals=6, alpha=0.1, seed=1, train_mask=train_mask
        )

    assert np.unique(partition.assignment[train_mask]).size == 6


def test_natural_partition_site_without_training_images():
    sites = np.array(["A"] * 30 + ["B"] * 30)
    labels = np.zeros(60, dtype=int)
    train_mask = np.r_[np.ones(30, dtype=bool), np.zeros(30, dtype=bool)]

    with pytest.raises(ValueError, match=r"Sites \['B'\] have no training images"):
        natural_partition(sites, labels, train_mask=train_mask)
    with pytest.raises(ValueError, match="one entry per image"):
        natural_partition(sites, labels, train_mask=np.ones(3, dtype=bool))

    partition = natural_partition(sites, labels, train_mask=np.ones(60, dtype=bool))
    assert partition.names == ("A", "B")
