"""Metrics for imbalanced skin-lesion classification.

Always predicting "nv" scores about two thirds plain accuracy on HAM10000, so the
headline metric is balanced accuracy: the mean recall over the classes present in
the true labels. Melanoma sensitivity and melanoma ROC AUC follow, because a
missed melanoma is the costliest error.

Every metric except the AUC is a function of the confusion matrix. A server can
therefore add up the hospitals' confusion matrices and call
`metrics_from_confusion` to get exactly the metrics of the pooled predictions.

A metric that is undefined on the given data is None, never NaN: the recall of a
class absent from the true labels, melanoma sensitivity without true melanomas,
and melanoma AUC unless both melanomas and other lesions are present.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from helpers.classes import CLASSES, MELANOMA_INDEX

# Softmax outputs in float32 sum to 1 within about 1e-6; allow for rounding.
PROBABILITY_SUM_TOLERANCE = 1e-4


def classification_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, *, n_classes: int = len(CLASSES)
) -> dict:
    """Compute balanced accuracy, per-class recall and melanoma metrics.

    The predicted class is the argmax of each row of `y_prob`.

    Args:
        y_true: (N,) true class indices in 0..n_classes - 1.
        y_prob: (N, n_classes) predicted probabilities; each row sums to 1.
        n_classes: number of classes. With the default 7, recall keys are the
            codes in CLASSES and class 4 is melanoma. With any other number the
            keys are the class indices and both melanoma metrics are None.

    Returns:
        dict with `balanced_accuracy` (float, equal to scikit-learn's
        `balanced_accuracy_score`), `accuracy` (float), `per_class_recall`
        (class -> float, or None for a class absent from y_true),
        `melanoma_sensitivity` (float or None), `melanoma_auc` (one-vs-rest ROC
        AUC of the melanoma probability, float or None), `confusion_matrix`
        ((n_classes, n_classes) int64, rows true, columns predicted) and `n`.

    Raises:
        ValueError: on empty input, mismatched shapes, labels out of range, or
            probabilities that are negative, non-finite or do not sum to 1.
        TypeError: on non-integer labels.
    """
    n_classes = _check_n_classes(n_classes)
    y_true = _check_labels(y_true, n_classes)
    y_prob = _check_probabilities(y_prob, n_classes, len(y_true))

    y_pred = y_prob.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    metrics = metrics_from_confusion(cm)

    metrics["melanoma_auc"] = None
    if n_classes == len(CLASSES):
        is_melanoma = y_true == MELANOMA_INDEX
        if 0 < is_melanoma.sum() < is_melanoma.size:
            auc = roc_auc_score(is_melanoma, y_prob[:, MELANOMA_INDEX])
            metrics["melanoma_auc"] = float(auc)
    return metrics


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """Compute the confusion-matrix metrics, for example of summed hospital counts.

    Args:
        cm: (K, K) non-negative integer counts, rows true class, columns
            predicted class, with at least one count.

    Returns:
        dict with `balanced_accuracy`, `accuracy`, `per_class_recall`,
        `melanoma_sensitivity`, `confusion_matrix` (a copy, int64) and `n`, as
        in `classification_metrics`. The melanoma AUC needs scores, not counts,
        so it is absent.

    Raises:
        ValueError: if cm is not square, has negative entries or no counts.
        TypeError: if cm is not an integer array.
    """
    cm = np.array(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(
            f"cm must be a square (K, K) confusion matrix, got shape {cm.shape}."
        )
    if not np.issubdtype(cm.dtype, np.integer):
        raise TypeError(
            f"cm must hold integer counts, got dtype {cm.dtype}; sum the "
            "hospitals' int confusion matrices without converting them."
        )
    if np.any(cm < 0):
        raise ValueError("cm contains negative counts; expected counts >= 0.")
    n = int(cm.sum())
    if n == 0:
        raise ValueError("cm contains no counts; evaluate on at least one image.")

    cm = cm.astype(np.int64)
    n_classes = cm.shape[0]
    support = cm.sum(axis=1)
    present = support > 0
    recall = np.zeros(n_classes)
    recall[present] = np.diag(cm)[present] / support[present]

    keys = CLASSES if n_classes == len(CLASSES) else range(n_classes)
    per_class_recall = {
        key: float(recall[k]) if present[k] else None for k, key in enumerate(keys)
    }
    melanoma_sensitivity = None
    if n_classes == len(CLASSES) and present[MELANOMA_INDEX]:
        melanoma_sensitivity = float(recall[MELANOMA_INDEX])

    return {
        "balanced_accuracy": float(np.mean(recall[present])),
        "accuracy": float(np.trace(cm) / n),
        "per_class_recall": per_class_recall,
        "melanoma_sensitivity": melanoma_sensitivity,
        "confusion_matrix": cm,
        "n": n,
    }


def _check_n_classes(n_classes: int) -> int:
    if not isinstance(n_classes, (int, np.integer)) or isinstance(n_classes, bool):
        raise TypeError(f"n_classes must be an int, got {n_classes!r}.")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}.")
    return int(n_classes)


def _check_labels(y_true: np.ndarray, n_classes: int) -> np.ndarray:
    y_true = np.asarray(y_true)
    if y_true.ndim != 1:
        raise ValueError(
            f"y_true must be 1-D (one class index per image), got shape {y_true.shape}."
        )
    if y_true.size == 0:
        raise ValueError("y_true is empty; evaluate on at least one image.")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise TypeError(
            f"y_true must hold integer class indices, got dtype {y_true.dtype}."
        )
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(
            f"y_true must lie in 0..{n_classes - 1}, got values "
            f"{y_true.min()}..{y_true.max()}."
        )
    return y_true


def _check_probabilities(
    y_prob: np.ndarray, n_classes: int, n_samples: int
) -> np.ndarray:
    y_prob = np.asarray(y_prob, dtype=float)
    if y_prob.shape != (n_samples, n_classes):
        raise ValueError(
            f"y_prob must have shape ({n_samples}, {n_classes}), one row of class "
            f"probabilities per label, got {y_prob.shape}."
        )
    if not np.all(np.isfinite(y_prob)):
        raise ValueError(
            "y_prob contains NaN or infinite values; check the model for diverged "
            "weights."
        )
    if np.any(y_prob < 0):
        raise ValueError("y_prob contains negative values; pass softmax outputs.")
    row_sums = y_prob.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1)))
    if abs(row_sums[worst] - 1) > PROBABILITY_SUM_TOLERANCE:
        raise ValueError(
            f"Each row of y_prob must sum to 1, but row {worst} sums to "
            f"{row_sums[worst]:.6g}; pass softmax outputs, not logits."
        )
    return y_prob
