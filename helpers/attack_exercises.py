"""Checkers for the attacks notebook's exercises: call one on your answer.

Like `helpers.exercises`, each checker computes the right answer itself, from
test cases of its own or from the values it is given, prints a short verdict and
returns True or False. None stores an answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from helpers.attacks import dp_roc_bound
from helpers.classes import CLASSES
from helpers.exercises import verdict
from helpers.hospital import Hospital, Update
from helpers.models import SkinLesionCNN

_TOLERANCE = 1e-6

# Checker cases use tiny images and a tiny CNN, so that they run in a blink.
_SIDE = 8


def check_label_from_update(function: Callable[[Update], int]) -> bool:
    """Run a learner's label reader on one-image updates of every class.

    Each case is a real update: a hospital holding one random image trains a
    small SkinLesionCNN for one local step, and `function(update)` must return
    that image's label.
    """
    rng = np.random.default_rng(0)
    model = SkinLesionCNN(width=4, groups=2, side=_SIDE, seed=0)
    for label in range(len(CLASSES)):
        image = rng.integers(0, 256, size=(1, _SIDE, _SIDE, 3), dtype=np.uint8)
        labels = np.array([label])
        empty = (image[:0], labels[:0])
        hospital = Hospital("clinic", train=(image, labels), val=empty, test=empty)
        update = hospital.train(model, local_epochs=1, lr=0.1, batch_size=1)

        got = function(update)
        if got != label:
            return verdict(
                False,
                f"for an image of class {label} ({CLASSES[label]}) your function "
                f"returned {got!r}. Look for the one positive entry of "
                "update.delta['head.bias'].",
            )
    return verdict(
        True, "the sign of the bias update gives away the label of every class."
    )


def check_auc_by_pairs(function: Callable[[np.ndarray, np.ndarray], float]) -> bool:
    """Compare a learner's pair-counting AUC with sklearn on cases with ties.

    `function(member_scores, nonmember_scores)` must return the share of
    (member, non-member) pairs in which the member scores higher, counting a tie
    as half a pair: the Mann-Whitney form of the ROC AUC.
    """
    rng = np.random.default_rng(1)
    no_ties = "count the pairs in which the member scores higher."
    ties = "count a tie as half a pair."
    cases = [
        (np.array([3.0, 2.0, 1.0]), np.array([0.0, 1.0, 4.0]), ties),
        (np.array([1.0, 1.0]), np.array([1.0, 1.0]), ties),
        (rng.integers(0, 5, 40) * 1.0, rng.integers(0, 5, 40) * 1.0, ties),
        (rng.normal(0.3, 1, 200), rng.normal(0, 1, 200), no_ties),
    ]
    for members, nonmembers, hint in cases:
        truth = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        expected = roc_auc_score(truth, np.r_[members, nonmembers])
        got = function(members, nonmembers)
        if got is None or not abs(float(got) - expected) < _TOLERANCE:
            return verdict(
                False,
                f"for members {members[:4]} and non-members {nonmembers[:4]} "
                f"(first 4 shown) the AUC is {expected:.4f}, yours is {got}: "
                f"{hint}",
            )
    return verdict(True, "your pair count equals sklearn's roc_auc_score.")


def check_dp_tpr_bound(
    *, epsilon: float, delta: float, fpr: float, answer: float
) -> bool:
    """Check the highest TPR an (epsilon, delta)-DP model allows at one FPR."""
    expected = dp_roc_bound(epsilon, delta, fpr)
    if abs(answer - expected) <= 1e-6 * max(1.0, expected):
        return verdict(
            True,
            f"at FPR {fpr:g}, no attack on an (epsilon={epsilon:g}, "
            f"delta={delta:g})-DP model exceeds TPR {expected:.4f}.",
        )
    only_first = min(math.exp(epsilon) * fpr + delta, 1.0)
    if abs(answer - only_first) <= 1e-6 and only_first != expected:
        return verdict(
            False, "the second inequality is tighter here: take the minimum of both."
        )
    return verdict(
        False,
        "evaluate min(e^epsilon * FPR + delta, 1 - e^-epsilon * (1 - delta - FPR)).",
    )


def check_local_steps(
    *, n_images: int, batch_size: int, local_epochs: int, answer: int
) -> bool:
    """Check how many SGD steps a hospital takes in one round."""
    expected = local_epochs * math.ceil(n_images / batch_size)
    if answer == expected:
        return verdict(
            True,
            f"{local_epochs} epoch(s) of {math.ceil(n_images / batch_size)} "
            f"batch(es): the attacker unrolls {expected} steps.",
        )
    if answer == local_epochs * (n_images // batch_size):
        return verdict(False, "the last, smaller batch of an epoch is a step too.")
    return verdict(
        False, "each local epoch takes one step per batch of batch_size images."
    )
