"""Tests for the imbalanced-classification metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

from helpers.classes import CLASS_NAMES, CLASSES, MELANOMA_INDEX
from helpers.metrics import classification_metrics, metrics_from_confusion

AKIEC, BCC, BKL, DF, MEL, NV, VASC = range(7)


def one_hot_probabilities(y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[y_pred]


def random_predictions(n: int, seed: int, n_classes: int = 7):
    """Return labels and softmax-like probabilities that are right about half the
    time."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, size=n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y_true] += 1.5
    y_prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, y_prob


def sklearn_balanced_accuracy(y_true, y_pred) -> float:
    # scikit-learn warns when y_pred contains a class that y_true lacks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return balanced_accuracy_score(y_true, y_pred)


def test_class_constants_agree():
    assert CLASSES == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert CLASSES[MELANOMA_INDEX] == "mel"
    assert tuple(CLASS_NAMES) == CLASSES
    assert CLASS_NAMES["mel"] == "melanoma"


def test_three_class_hand_example():
    # True 0 0 0 1 1 2, predicted 0 0 1 1 2 2. Confusion matrix (rows true):
    #   [[2, 1, 0],
    #    [0, 1, 1],
    #    [0, 0, 1]]
    # Recalls 2/3, 1/2, 1; balanced accuracy (2/3 + 1/2 + 1) / 3 = 13/18.
    # Accuracy 4/6. With three classes no class is melanoma.
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    metrics = classification_metrics(
        y_true, one_hot_probabilities(y_pred, 3), n_classes=3
    )
    np.testing.assert_array_equal(
        metrics["confusion_matrix"], [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    )
    assert metrics["balanced_accuracy"] == pytest.approx(13 / 18)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class_recall"] == pytest.approx({0: 2 / 3, 1: 0.5, 2: 1.0})
    assert metrics["melanoma_sensitivity"] is None
    assert metrics["melanoma_auc"] is None
    assert metrics["n"] == 6


def seven_class_example():
    # Eight images: (true, predicted, melanoma probability).
    #   mel  -> mel  0.70     nv  -> nv   0.20     bcc -> bcc  0.05
    #   mel  -> mel  0.60     nv  -> mel  0.50     bcc -> nv   0.35
    #   mel  -> nv   0.30     nv  -> nv   0.10
    y_true = np.array([MEL, MEL, MEL, NV, NV, NV, BCC, BCC])
    y_prob = np.zeros((8, 7))
    rows = [
        {MEL: 0.70, NV: 0.30},
        {MEL: 0.60, NV: 0.40},
        {MEL: 0.30, NV: 0.70},
        {MEL: 0.20, NV: 0.80},
        {MEL: 0.50, NV: 0.30, BKL: 0.20},
        {MEL: 0.10, NV: 0.90},
        {MEL: 0.05, BCC: 0.95},
        {MEL: 0.35, NV: 0.45, BCC: 0.20},
    ]
    for i, row in enumerate(rows):
        for label, probability in row.items():
            y_prob[i, label] = probability
    return y_true, y_prob


def test_seven_class_hand_example():
    # Recalls: mel 2/3, nv 2/3, bcc 1/2; the other four classes are absent.
    # Balanced accuracy (2/3 + 2/3 + 1/2) / 3 = 11/18; accuracy 5/8.
    # Melanoma AUC: melanoma scores 0.7, 0.6, 0.3 against the five others
    # 0.2, 0.5, 0.1, 0.05, 0.35. 0.7 and 0.6 beat all five, 0.3 beats three,
    # so 13 of 15 pairs are ordered right: AUC 13/15.
    y_true, y_prob = seven_class_example()
    metrics = classification_metrics(y_true, y_prob)
    recall = metrics["per_class_recall"]
    assert list(recall) == list(CLASSES)
    assert recall["mel"] == pytest.approx(2 / 3)
    assert recall["nv"] == pytest.approx(2 / 3)
    assert recall["bcc"] == pytest.approx(0.5)
    for code in ("akiec", "bkl", "df", "vasc"):
        assert recall[code] is None, code
    assert metrics["balanced_accuracy"] == pytest.approx(11 / 18)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["melanoma_sensitivity"] == pytest.approx(2 / 3)
    assert metrics["melanoma_auc"] == pytest.approx(13 / 15)
    assert metrics["confusion_matrix"][MEL, NV] == 1
    assert metrics["confusion_matrix"][NV, MEL] == 1
    assert metrics["confusion_matrix"].dtype == np.int64


@pytest.mark.parametrize("seed", range(5))
def test_matches_scikit_learn(seed):
    y_true, y_prob = random_predictions(300, seed)
    y_true[y_true == DF] = NV  # One class absent from y_true.
    y_pred = y_prob.argmax(axis=1)
    metrics = classification_metrics(y_true, y_prob)

    assert metrics["balanced_accuracy"] == sklearn_balanced_accuracy(y_true, y_pred)

    recall = recall_score(
        y_true, y_pred, labels=range(7), average=None, zero_division=0
    )
    for k, code in enumerate(CLASSES):
        if k == DF:
            assert metrics["per_class_recall"][code] is None
        else:
            assert metrics["per_class_recall"][code] == pytest.approx(recall[k])

    expected_auc = roc_auc_score(y_true == MEL, y_prob[:, MEL])
    assert metrics["melanoma_auc"] == pytest.approx(expected_auc)


def test_summed_confusion_equals_pooled():
    y_true, y_prob = random_predictions(500, seed=11)
    hospitals = np.array_split(np.arange(500), [60, 260])
    summed = sum(
        classification_metrics(y_true[part], y_prob[part])["confusion_matrix"]
        for part in hospitals
    )
    federated = metrics_from_confusion(summed)
    pooled = classification_metrics(y_true, y_prob)

    np.testing.assert_array_equal(federated["confusion_matrix"], summed)
    np.testing.assert_array_equal(pooled["confusion_matrix"], summed)
    assert federated["balanced_accuracy"] == pooled["balanced_accuracy"]
    assert federated["accuracy"] == pooled["accuracy"]
    assert federated["per_class_recall"] == pooled["per_class_recall"]
    assert federated["melanoma_sensitivity"] == pooled["melanoma_sensitivity"]
    assert federated["n"] == pooled["n"] == 500
    assert "melanoma_auc" not in federated


def test_always_nv_scores_chance_balanced_accuracy():
    # Predicting nv for everyone: recall 1 for nv, 0 for the six other classes.
    y_true = np.repeat(np.arange(7), [3, 5, 11, 1, 11, 67, 2])
    y_prob = one_hot_probabilities(np.full(y_true.size, NV), 7)
    metrics = classification_metrics(y_true, y_prob)
    assert metrics["accuracy"] == pytest.approx(0.67)
    assert metrics["balanced_accuracy"] == pytest.approx(1 / 7)
    assert metrics["melanoma_sensitivity"] == 0.0
    # A constant melanoma score ranks no pair right or wrong: AUC 0.5.
    assert metrics["melanoma_auc"] == pytest.approx(0.5)


def test_no_melanoma_gives_none():
    y_true = np.array([NV, NV, BCC])
    y_prob = one_hot_probabilities(np.array([NV, MEL, BCC]), 7)
    metrics = classification_metrics(y_true, y_prob)
    assert metrics["melanoma_sensitivity"] is None
    assert metrics["melanoma_auc"] is None
    assert metrics["per_class_recall"]["mel"] is None
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)


def test_only_melanoma_gives_no_auc():
    y_true = np.array([MEL, MEL])
    y_prob = one_hot_probabilities(np.array([MEL, NV]), 7)
    metrics = classification_metrics(y_true, y_prob)
    assert metrics["melanoma_sensitivity"] == pytest.approx(0.5)
    assert metrics["melanoma_auc"] is None


def test_results_hold_no_nan():
    y_true = np.array([VASC])
    y_prob = one_hot_probabilities(np.array([AKIEC]), 7)
    metrics = classification_metrics(y_true, y_prob)
    values = [
        metrics["balanced_accuracy"],
        metrics["accuracy"],
        metrics["melanoma_sensitivity"],
        metrics["melanoma_auc"],
        *metrics["per_class_recall"].values(),
    ]
    assert not any(isinstance(v, float) and np.isnan(v) for v in values)
    assert metrics["balanced_accuracy"] == 0.0


def test_float32_softmax_rows_accepted():
    y_true, y_prob = random_predictions(50, seed=3)
    metrics = classification_metrics(y_true, y_prob.astype(np.float32))
    assert metrics["n"] == 50


@pytest.mark.parametrize(
    ("y_true", "y_prob", "error", "message"),
    [
        (np.array([], dtype=int), np.zeros((0, 7)), ValueError, "empty"),
        (np.array([0, 1]), np.full((2, 6), 1 / 6), ValueError, r"shape \(2, 7\)"),
        (np.array([0, 1]), np.full((3, 7), 1 / 7), ValueError, r"shape \(2, 7\)"),
        (np.array([0, 1]), np.full((2, 7), 0.13), ValueError, "sums to 0.91"),
        (np.array([0, 1]), np.full((2, 7), 2.0), ValueError, "not logits"),
        (np.array([0, 7]), np.full((2, 7), 1 / 7), ValueError, r"0\.\.6"),
        (np.array([-1, 0]), np.full((2, 7), 1 / 7), ValueError, r"0\.\.6"),
        (np.array([0.0, 1.0]), np.full((2, 7), 1 / 7), TypeError, "integer"),
        (np.array([[0], [1]]), np.full((2, 7), 1 / 7), ValueError, "1-D"),
    ],
)
def test_classification_rejects_bad_input(y_true, y_prob, error, message):
    with pytest.raises(error, match=message):
        classification_metrics(y_true, y_prob)


def test_classification_rejects_non_finite_and_negative():
    y_true = np.array([0, 1])
    y_prob = np.full((2, 7), 1 / 7)
    y_prob[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        classification_metrics(y_true, y_prob)
    y_prob[1, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        classification_metrics(y_true, y_prob)
    y_prob = one_hot_probabilities(np.array([0, 1]), 7)
    y_prob[0, 0], y_prob[0, 1] = 1.5, -0.5
    with pytest.raises(ValueError, match="negative"):
        classification_metrics(y_true, y_prob)


def test_classification_rejects_bad_n_classes():
    with pytest.raises(ValueError, match="at least 2"):
        classification_metrics(np.array([0]), np.ones((1, 1)), n_classes=1)
    with pytest.raises(TypeError, match="must be an int"):
        classification_metrics(np.array([0]), np.ones((1, 7)) / 7, n_classes=7.0)


def test_confusion_hand_example():
    # Rows true, columns predicted: recalls 3/4 and 1/2, balanced accuracy 5/8.
    metrics = metrics_from_confusion([[3, 1], [2, 2]])
    assert metrics["balanced_accuracy"] == pytest.approx(5 / 8)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["per_class_recall"] == pytest.approx({0: 0.75, 1: 0.5})
    assert metrics["melanoma_sensitivity"] is None
    assert metrics["n"] == 8


def test_confusion_returns_copy():
    cm = np.zeros((7, 7), dtype=np.int32)
    cm[MEL, MEL] = 3
    metrics = metrics_from_confusion(cm)
    cm[MEL, MEL] = 0
    assert metrics["confusion_matrix"][MEL, MEL] == 3
    assert metrics["melanoma_sensitivity"] == 1.0


@pytest.mark.parametrize(
    ("cm", "error", "message"),
    [
        (np.zeros((2, 3), dtype=int), ValueError, "square"),
        (np.zeros(4, dtype=int), ValueError, "square"),
        (np.zeros((0, 0), dtype=int), ValueError, "square"),
        (np.array([[1.0, 0.0], [0.0, 1.0]]), TypeError, "integer counts"),
        (np.array([[1, -1], [0, 1]]), ValueError, "negative"),
        (np.zeros((7, 7), dtype=int), ValueError, "no counts"),
    ],
)
def test_confusion_rejects_bad_input(cm, error, message):
    with pytest.raises(error, match=message):
        metrics_from_confusion(cm)
