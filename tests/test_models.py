"""Tests for the GroupNorm CNN, class weights and predicted probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from helpers.models import SkinLesionCNN, class_weights, predict_proba


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run this file's tiny models on one thread, restoring the count afterwards.

    Extra threads only add overhead at this size, and on a CPU shared with other
    jobs they slowed this file about tenfold (2 cores, torch 2.14).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("side", [28, 64])
def test_cnn_logits_shape_per_side(side):
    model = SkinLesionCNN(side=side, seed=0)

    logits = model(torch.rand(5, 3, side, side))

    assert logits.shape == (5, 7)
    assert torch.all(torch.isfinite(logits))


def test_cnn_width_and_classes_configurable():
    model = SkinLesionCNN(n_classes=3, width=8, groups=2, seed=0)

    assert model(torch.rand(2, 3, 28, 28)).shape == (2, 3)
    assert model.features[0].out_channels == 8
    assert model.head.in_features == 32


def test_cnn_uses_groupnorm_not_batchnorm():
    model = SkinLesionCNN(seed=0)
    kinds = [type(module) for module in model.modules()]

    assert kinds.count(nn.GroupNorm) == 3
    assert not any(issubclass(kind, nn.modules.batchnorm._BatchNorm) for kind in kinds)
    assert ModuleValidator.validate(model, strict=False) == []


def test_cnn_seed_repeats_weights_and_spares_global_rng():
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)

    first = SkinLesionCNN(seed=7)
    draw_after = torch.rand(3)
    second = SkinLesionCNN(seed=7)
    other = SkinLesionCNN(seed=8)

    assert torch.equal(draw_after, expected_draw)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    assert not torch.equal(first.head.weight, other.head.weight)


def test_cnn_without_seed_follows_global_rng():
    torch.manual_seed(5)
    first = SkinLesionCNN()
    torch.manual_seed(5)
    second = SkinLesionCNN()

    assert torch.equal(first.head.weight, second.head.weight)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 0}, "width must be at least 1"),
        ({"width": 6, "groups": 4}, "multiple of groups"),
        ({"groups": 0}, "multiple of groups"),
        ({"side": 30}, "multiple of 4"),
        ({"side": 0}, "multiple of 4"),
        ({"n_classes": 1}, "n_classes must be at least 2"),
    ],
)
def test_cnn_rejects_bad_architecture(options, message):
    with pytest.raises(ValueError, match=message):
        SkinLesionCNN(**options)


def test_cnn_rejects_non_int_width():
    with pytest.raises(TypeError, match="width must be an int"):
        SkinLesionCNN(width=16.0)


@pytest.mark.parametrize(
    "shape", [(2, 3, 64, 64), (2, 28, 28, 3), (3, 28, 28), (2, 1, 28, 28)]
)
def test_cnn_rejects_wrong_input_shape(shape):
    model = SkinLesionCNN(side=28, seed=0)

    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, 28, 28\)"):
        model(torch.rand(shape))


def test_cnn_rejects_uint8_input():
    model = SkinLesionCNN(seed=0)

    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))


def test_class_weights_inverse_frequency():
    weights = class_weights([1, 3])

    assert weights.dtype == torch.float32
    assert torch.allclose(weights, torch.tensor([2.0, 2.0 / 3.0]))


def test_class_weights_absent_class_zero():
    counts = np.array([2, 0, 6, 0])

    weights = class_weights(counts)

    # n = 8 over K = 2 present classes: 8 / (2 * 2) and 8 / (2 * 6).
    assert torch.allclose(weights, torch.tensor([2.0, 0.0, 2.0 / 3.0, 0.0]))
    mean_per_example = float((weights.double() * torch.tensor(counts)).sum() / 8)
    assert mean_per_example == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([0, 0, 0], "all zero"),
        ([3, -1], "non-negative"),
        ([[1, 2], [3, 4]], "1-D"),
        ([], "1-D"),
        ([1.5, 2.0], "whole numbers"),
    ],
)
def test_class_weights_rejects_bad_counts(counts, message):
    with pytest.raises(ValueError, match=message):
        class_weights(counts)


def test_predict_proba_matches_softmax():
    model = SkinLesionCNN(seed=0)
    x = torch.rand(10, 3, 28, 28)

    probabilities = predict_proba(model, x, batch_size=4)

    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    assert probabilities.shape == (10, 7)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_predict_proba_restores_train_mode():
    model = SkinLesionCNN(seed=0)
    model.train()

    predict_proba(model, torch.rand(2, 3, 28, 28))

    assert model.training


def test_predict_proba_empty_input():
    model = SkinLesionCNN(seed=0)

    probabilities = predict_proba(model, torch.zeros(0, 3, 28, 28))

    assert probabilities.shape == (0, 7)


def test_predict_proba_rejects_bad_input():
    model = SkinLesionCNN(seed=0)

    with pytest.raises(TypeError, match="torch.Tensor"):
        predict_proba(model, np.zeros((2, 28, 28, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        predict_proba(model, torch.rand(2, 3, 28, 28), batch_size=0)
