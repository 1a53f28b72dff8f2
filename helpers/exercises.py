"""Checkers for the notebooks' exercises: call one on your answer.

Each checker computes the right answer itself, from the data it is given or from
test cases of its own, prints a short verdict and returns True or False. None
stores an answer: a checker stays right when the data set or the seed changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from helpers.classes import CLASSES
from helpers.federated import fedavg
from helpers.hospital import Update
from helpers.splits import label_table, partition_dirichlet

_TOLERANCE = 1e-6


def verdict(correct: bool, message: str) -> bool:
    """Print a checker's verdict on a learner's answer and return it."""
    print(("Correct: " if correct else "Not yet: ") + message)
    return correct


# Notebook 1: the data.


def check_always_melanoma(
    labels: np.ndarray, *, accuracy: float, balanced_accuracy: float
) -> bool:
    """Check the accuracy and balanced accuracy of always answering melanoma."""
    labels = np.asarray(labels)
    expected_accuracy = float(np.mean(labels == CLASSES.index("mel")))
    expected_balanced = 1.0 / len(np.unique(labels))

    accuracy_ok = abs(accuracy - expected_accuracy) < 1e-3
    balanced_ok = abs(balanced_accuracy - expected_balanced) < 1e-3
    if accuracy_ok and balanced_ok:
        return verdict(
            True,
            "Accuracy is the melanoma share; balanced accuracy is "
            "one recall of 1 among the classes present.",
        )
    if not accuracy_ok:
        return verdict(False, "Accuracy counts the images whose label is mel.")
    return verdict(
        False,
        "Balanced accuracy averages the recall of every class "
        "present: mel has recall 1, every other class 0.",
    )


def check_leaked_test_images(function: Callable[[np.ndarray, np.ndarray], int]) -> bool:
    """Run a learner's leak counter on cases with known answers."""
    cases = [
        (["train", "test", "test", "val"], ["a", "a", "b", "b"], 1),
        (["train", "train", "test", "test"], ["a", "b", "c", "d"], 0),
        (["train", "test", "test", "test"], ["a", "a", "a", "b"], 2),
        (["test", "val", "train", "test"], ["x", "x", "x", "x"], 2),
    ]
    for split, lesion_ids, expected in cases:
        got = function(np.array(split), np.array(lesion_ids))
        if got != expected:
            return verdict(
                False,
                f"for split {split} and lesion ids {lesion_ids} the answer is "
                f"{expected}, your function returned {got}.",
            )
    return verdict(
        True, "Your function counts every test image whose lesion is also in training."
    )


def check_site_with_most_melanoma(
    sites: np.ndarray | None, labels: np.ndarray, answer: str
) -> bool:
    """Check which acquisition site has the largest fraction of melanoma images."""
    if sites is None:
        return verdict(
            False,
            "this data set has no acquisition sites; use the "
            "synthetic data or HAM10000.",
        )
    share = (
        pd.Series(np.asarray(labels) == CLASSES.index("mel"))
        .groupby(np.asarray(sites))
        .mean()
    )
    best = share[share == share.max()].index
    if answer in best:
        return verdict(
            True, f"{answer}: {share[answer]:.1%} of its images are melanoma."
        )
    return verdict(
        False,
        "compare each site's melanoma count with its own total, not across sites.",
    )


# Notebook 2: virtual hospitals.


def check_rarest_public_count(
    hospitals: Sequence, *, hospital: str, diagnosis: str, count: int
) -> bool:
    """Check the smallest non-zero count in the hospitals' public histograms."""
    table = pd.DataFrame(
        [np.asarray(h.label_histogram) for h in hospitals],
        index=[h.name for h in hospitals],
        columns=CLASSES,
    )
    positive = table.where(table > 0)
    smallest = int(positive.min().min())

    if count != smallest:
        return verdict(False, f"the smallest non-zero count is not {count}.")
    if hospital not in table.index or diagnosis not in table.columns:
        return verdict(
            False,
            f"{hospital!r} / {diagnosis!r} is not a hospital and "
            "a diagnosis code of this federation.",
        )
    if table.loc[hospital, diagnosis] != smallest:
        return verdict(
            False,
            f"{hospital} has {table.loc[hospital, diagnosis]} "
            f"images of {diagnosis}, not {smallest}.",
        )
    return verdict(
        True, f"{hospital} reports only {smallest} {diagnosis} image(s) in public."
    )


def _reference_label_skew(table: pd.DataFrame) -> pd.Series:
    counts = table[list(CLASSES)].astype(float)
    mix = counts.div(counts.sum(axis=1), axis=0)
    pooled = counts.sum() / counts.to_numpy().sum()
    return 0.5 * (mix - pooled).abs().sum(axis=1)


def check_label_skew(function: Callable[[pd.DataFrame], pd.Series]) -> bool:
    """Run a learner's total-variation skew on label tables with known answers."""
    identical = pd.DataFrame(
        [[1, 2, 0, 0, 3, 4, 0]] * 2, columns=CLASSES, index=["a", "b"]
    )
    disjoint = pd.DataFrame(
        [[5, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 5, 0]],
        columns=CLASSES,
        index=["a", "b"],
    )
    rng = np.random.default_rng(0)
    random = pd.DataFrame(
        rng.integers(0, 50, size=(4, 7)), columns=CLASSES, index=list("abcd")
    )
    for table in (identical, disjoint, random):
        table = table.assign(total=table.sum(axis=1))
        expected = _reference_label_skew(table)
        got = pd.Series(function(table), dtype=float)
        if got.shape != expected.shape or not np.allclose(
            got.to_numpy(), expected.to_numpy(), atol=_TOLERANCE
        ):
            return verdict(
                False,
                f"for the table\n{table}\nthe skews are {expected.round(4).tolist()}, "
                f"your function returned {got.round(4).tolist()}.",
            )
    return verdict(
        True,
        "0 for identical mixes, 0.5 for two disjoint equal-sized "
        "hospitals, and right on a random table.",
    )


def check_more_skewed_alpha(
    labels: np.ndarray, lesion_ids: np.ndarray, answer: float
) -> bool:
    """Check which of alpha 0.05 and 100 gives the more skewed Dirichlet partition."""
    skews = {}
    for alpha in (0.05, 100):
        partition = partition_dirichlet(
            labels, 8, alpha=alpha, groups=lesion_ids, seed=0
        )
        skews[alpha] = float(
            _reference_label_skew(label_table(partition, labels)).mean()
        )
    expected = max(skews, key=skews.get)
    if answer == expected:
        return verdict(
            True,
            f"mean skew {skews[0.05]:.3f} at alpha 0.05 against "
            f"{skews[100]:.3f} at alpha 100.",
        )
    return verdict(False, "a small alpha concentrates each class on few hospitals.")


# Notebook 3: federated averaging.


def check_fedavg(function: Callable) -> bool:
    """Compare a learner's FedAvg with `helpers.federated.fedavg` on random updates."""
    generator = torch.Generator().manual_seed(0)
    global_state = {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "conv.bias": torch.randn(4, generator=generator),
    }
    updates = [
        Update(
            hospital=f"hospital {k}",
            delta={
                key: torch.randn(value.shape, generator=generator)
                for key, value in global_state.items()
            },
            n_samples=n_samples,
            train_loss=0.0,
        )
        for k, n_samples in enumerate([10, 30, 200])
    ]
    expected = fedavg(global_state, updates)
    got = function(global_state, updates)

    if set(got) != set(expected):
        return verdict(False, f"return one tensor per key {sorted(expected)}.")
    for key in expected:
        if not torch.allclose(torch.as_tensor(got[key]), expected[key], atol=1e-5):
            unweighted = global_state[key] + sum(u.delta[key] for u in updates) / 3
            if torch.allclose(torch.as_tensor(got[key]), unweighted, atol=1e-5):
                return verdict(
                    False,
                    "you averaged the updates equally; weight each by its n_samples.",
                )
            return verdict(False, f"{key} differs from the weighted average.")
    return verdict(True, "your FedAvg matches the tested helper.")


def check_biggest_gain(per_hospital: pd.DataFrame, answer: str) -> bool:
    """Check which hospital gains most from the federated model over local-only."""
    gain = per_hospital["federated"] - per_hospital["local only"]
    best = gain[gain == gain.max()].index
    if answer in best:
        return verdict(True, f"{answer} gains {gain[answer]:+.3f} balanced accuracy.")
    return verdict(
        False,
        "subtract the local-only column from the federated one "
        "and take the largest difference.",
    )


def check_sampled_budget(
    *, n_hospitals: int, fraction: float, rounds: int, updates: int, passes: float
) -> bool:
    """Check the updates and mean passes per example of a run that samples hospitals.

    The count follows `run_federated`'s rule: max(1, round(fraction * n)) hospitals
    per round, halves rounded up. Every hospital is sampled with the same
    probability, so each example is passed over in that share of the rounds.
    """
    per_round = max(1, int(fraction * n_hospitals + 0.5))
    expected_updates = per_round * rounds
    expected_passes = rounds * per_round / n_hospitals

    if updates != expected_updates:
        return verdict(False, f"{per_round} hospitals take part in each round.")
    if abs(passes - expected_passes) > 1e-9:
        return verdict(
            False,
            "each hospital takes part in a share "
            f"{per_round}/{n_hospitals} of the rounds.",
        )
    return verdict(
        True,
        f"{expected_updates} updates, {expected_passes:g} passes "
        "per example on average.",
    )
