"""Tests for gradient inversion and membership inference."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.attacks import (
    InversionResult,
    MembershipResult,
    PixelMLP,
    calibrated_scores,
    dp_roc_bound,
    example_losses,
    infer_label,
    invert_update,
    logit_confidence,
    loss_threshold_scores,
    membership_roc,
    membership_split,
    plot_reconstructions,
    plot_roc,
    psnr,
    reconstruction_quality,
    simulate_local_update,
    ssim,
    total_variation,
    train_reference_models,
)
from helpers.datasets import images_to_tensor, load_dataset
from helpers.federated import train_pooled
from helpers.hospital import Hospital, Update
from helpers.models import SkinLesionCNN

SIDE = 28
LR = 0.05

# Membership tests: pools of random images (see memorisation_pool), and the
# PixelMLP settings that fit a pool to a loss near 0.01 (about 0.6 s each on one
# thread).
POOL_SIZE = 1000
LABEL_RULE = np.random.default_rng(1234).normal(size=(3 * 8 * 8, 7))
MLP_EPOCHS = 80
MLP_LR = 0.05


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run this file on one thread, restoring the count afterwards.

    On a 2-core CPU shared with other jobs, two threads made training about a
    hundred times slower than one (torch 2.14).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


def one_hospital(images, labels):
    empty = (images[:0], labels[:0])
    return Hospital("north", train=(images, labels), val=empty, test=empty)


def hospital_orders(seed, n_images, local_epochs):
    # Hospital.train seeds a generator that sgd_local_step draws one
    # permutation from per local epoch.
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n_images, generator=generator) for _ in range(local_epochs)]


def largest_difference(first, second):
    return max(float((first[key] - second[key]).abs().max()) for key in first)


def dp_sgd_update(model, images, labels, *, max_grad_norm, noise_multiplier, seed):
    """Build the update of one Opacus DP-SGD step on a one-image batch.

    Opacus clips the image's gradient to max_grad_norm and adds Gaussian noise of
    standard deviation noise_multiplier * max_grad_norm (Abadi et al. 2016). The
    batch is fixed rather than Poisson-sampled, so the one image is always in it.
    """
    local = copy.deepcopy(model)
    optimizer = torch.optim.SGD(local.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(images, labels), batch_size=1)
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        # The secure random generator needs torchcsprng; a test needs none.
        warnings.simplefilter("ignore")
        private, optimizer, loader = engine.make_private(
            module=local,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=False,
            noise_generator=torch.Generator().manual_seed(seed),
        )
    for batch_images, batch_labels in loader:
        optimizer.zero_grad()
        F.cross_entropy(private(batch_images), batch_labels).backward()
        optimizer.step()

    trained = local.state_dict()
    delta = {key: trained[key] - value for key, value in model.state_dict().items()}
    return Update(hospital="north", delta=delta, n_samples=1, train_loss=0.0)


# Simulating the hospital's local training.


def test_simulate_matches_hospital_step(data):
    images, labels = data.images[:1], data.labels[:1]
    model = SkinLesionCNN(side=SIDE, seed=0)
    real = one_hospital(images, labels).train(
        model, local_epochs=1, lr=LR, batch_size=1
    )

    simulated = simulate_local_update(
        model, images_to_tensor(images), torch.as_tensor(labels), lr=LR, batch_size=1
    )

    assert set(simulated) == {name for name, _ in model.named_parameters()}
    assert largest_difference(simulated, real.delta) < 1e-5
    assert largest_difference(simulated, {k: 0 * v for k, v in real.delta.items()}) > 0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_simulate_matches_several_steps(data, momentum):
    images, labels = data.images[:6], data.labels[:6]
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.5, 0.3, 3.0])
    model = SkinLesionCNN(width=8, side=SIDE, seed=1)
    real = one_hospital(images, labels).train(
        model,
        local_epochs=2,
        lr=LR,
        batch_size=4,
        seed=3,
        momentum=momentum,
        class_weights=weights,
    )

    simulated = simulate_local_update(
        model,
        images_to_tensor(images),
        torch.as_tensor(labels),
        lr=LR,
        local_epochs=2,
        batch_size=4,
        momentum=momentum,
        class_weights=weights,
        orders=hospital_orders(3, 6, 2),
    )

    assert largest_difference(simulated, real.delta) < 1e-5


def test_simulate_assumed_order_differs(data):
    # Without the hospital's shuffling order, two epochs of two batches give
    # another update: the attacker's simulation is then an approximation.
    images, labels = data.images[:4], data.labels[:4]
    model = SkinLesionCNN(width=8, side=SIDE, seed=1)
    real = one_hospital(images, labels).train(
        model, local_epochs=2, lr=LR, batch_size=2, seed=5
    )

    simulated = simulate_local_update(
        model,
        images_to_tensor(images),
        torch.as_tensor(labels),
        lr=LR,
        local_epochs=2,
        batch_size=2,
    )

    assert largest_difference(simulated, real.delta) > 1e-4


def test_simulate_leaves_model_unchanged(data):
    model = SkinLesionCNN(width=8, side=SIDE, seed=2)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    model.eval()

    simulate_local_update(
        model,
        images_to_tensor(data.images[:2]),
        torch.as_tensor(data.labels[:2]),
        lr=LR,
        batch_size=2,
    )

    assert largest_difference(model.state_dict(), before) == 0
    assert not model.training


def test_simulate_one_hot_equals_hard_labels(data):
    images = images_to_tensor(data.images[:3])
    labels = torch.as_tensor(data.labels[:3])
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.5, 0.3, 3.0])
    model = SkinLesionCNN(width=8, side=SIDE, seed=3)
    settings = dict(lr=LR, batch_size=3, class_weights=weights)

    hard = simulate_local_update(model, images, labels, **settings)
    soft = simulate_local_update(
        model, images, F.one_hot(labels, 7).float(), **settings
    )

    assert largest_difference(hard, soft) < 1e-6


def test_simulate_is_differentiable(data):
    images = images_to_tensor(data.images[:2]).requires_grad_(True)
    model = SkinLesionCNN(width=8, side=SIDE, seed=4)

    delta = simulate_local_update(
        model,
        images,
        torch.as_tensor(data.labels[:2]),
        lr=LR,
        local_epochs=2,
        batch_size=1,
    )
    total = sum((value**2).sum() for value in delta.values())
    (gradient,) = torch.autograd.grad(total, images)

    assert gradient.shape == images.shape
    assert torch.all(torch.isfinite(gradient))
    assert float(gradient.abs().sum()) > 0


def test_simulate_rejects_bad_input(data):
    model = SkinLesionCNN(width=8, side=SIDE, seed=0)
    images = images_to_tensor(data.images[:2])
    labels = torch.as_tensor(data.labels[:2])

    with pytest.raises(ValueError, match="one per image"):
        simulate_local_update(model, images, labels[:1], lr=LR, batch_size=1)
    with pytest.raises(ValueError, match="soft labels"):
        simulate_local_update(model, images, torch.ones(3, 7) / 7, lr=LR, batch_size=1)
    with pytest.raises(TypeError, match="float tensor"):
        simulate_local_update(
            model, torch.as_tensor(data.images[:2]), labels, lr=LR, batch_size=1
        )
    with pytest.raises(ValueError, match="N, 3, side, side"):
        simulate_local_update(model, images[:, :2], labels, lr=LR, batch_size=1)
    with pytest.raises(ValueError, match="lr must be positive"):
        simulate_local_update(model, images, labels, lr=0.0, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        simulate_local_update(model, images, labels, lr=LR, batch_size=0)
    with pytest.raises(ValueError, match="momentum"):
        simulate_local_update(model, images, labels, lr=LR, batch_size=1, momentum=1)
    with pytest.raises(ValueError, match="one permutation per local epoch"):
        simulate_local_update(
            model, images, labels, lr=LR, batch_size=1, orders=[[0, 1], [1, 0]]
        )
    with pytest.raises(ValueError, match="permutation of range"):
        simulate_local_update(
            model, images, labels, lr=LR, batch_size=1, orders=[[0, 0]]
        )


def small_mlp_case():
    model = PixelMLP(n_classes=3, hidden=8, side=8, seed=0)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return model, images, torch.tensor([0, 2])


@pytest.mark.parametrize("bad_label", [3, -1, -100])
def test_simulate_rejects_label_out_of_range(bad_label):
    model, images, _ = small_mlp_case()

    # -100 is cross-entropy's ignore_index: it would give an all-zero update.
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        simulate_local_update(
            model, images, torch.tensor([0, bad_label]), lr=0.1, batch_size=2
        )


def test_simulate_rejects_bad_soft_labels():
    model, images, _ = small_mlp_case()

    with pytest.raises(ValueError, match=r"soft labels must have shape \(2, 3\)"):
        simulate_local_update(model, images, torch.ones(2, 5) / 5, lr=0.1, batch_size=2)
    with pytest.raises(ValueError, match="summing to 1 in every row"):
        simulate_local_update(
            model, images, torch.full((2, 3), 5.0), lr=0.1, batch_size=2
        )
    negative = torch.tensor([[1.5, -0.5, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="class probabilities"):
        simulate_local_update(model, images, negative, lr=0.1, batch_size=2)
    with pytest.raises(TypeError, match="integer class indices"):
        simulate_local_update(
            model, images, torch.tensor([0.0, 2.0]), lr=0.1, batch_size=2
        )


def test_simulate_rejects_bad_class_weights():
    model, images, labels = small_mlp_case()
    settings = dict(lr=0.1, batch_size=1)

    with pytest.raises(
        ValueError, match=r"class_weights must have one entry per class \(3\)"
    ):
        simulate_local_update(
            model, images, labels, class_weights=torch.ones(5), **settings
        )
    with pytest.raises(ValueError, match="class_weights are all 0"):
        simulate_local_update(
            model, images, labels, class_weights=torch.zeros(3), **settings
        )
    with pytest.raises(ValueError, match=r"0 for class indices \[2\]"):
        simulate_local_update(
            model,
            images,
            labels,
            class_weights=torch.tensor([1.0, 1.0, 0.0]),
            **settings,
        )
    with pytest.raises(ValueError, match="finite and >= 0"):
        simulate_local_update(
            model,
            images,
            labels,
            class_weights=torch.tensor([1.0, -1.0, 1.0]),
            **settings,
        )
    soft = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    with pytest.raises(ValueError, match=r"soft labels of images \[0\] a weight of 0"):
        simulate_local_update(
            model, images, soft, class_weights=torch.tensor([1.0, 0.0, 1.0]), **settings
        )


def test_simulate_converts_image_dtype():
    model, images, labels = small_mlp_case()
    expected = simulate_local_update(model, images, labels, lr=0.1, batch_size=2)

    for dtype in (torch.float64, torch.float16):
        converted = simulate_local_update(
            model, images.to(dtype), labels, lr=0.1, batch_size=2
        )

        assert all(value.dtype == torch.float32 for value in converted.values())
        assert largest_difference(converted, expected) < 1e-4


def test_simulate_rejects_non_finite_input():
    model, images, labels = small_mlp_case()

    with pytest.raises(ValueError, match="lr must be finite"):
        simulate_local_update(model, images, labels, lr=math.inf, batch_size=2)
    with pytest.raises(ValueError, match="lr must be finite"):
        simulate_local_update(model, images, labels, lr=math.nan, batch_size=2)
    with pytest.raises(ValueError, match="weight_decay must be finite"):
        simulate_local_update(
            model, images, labels, lr=0.1, batch_size=2, weight_decay=math.inf
        )
    nan_images = images.clone()
    nan_images[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"images must be floats in \[0, 1\], got NaN"):
        simulate_local_update(model, nan_images, labels, lr=0.1, batch_size=2)
    with pytest.raises(ValueError, match=r"images must be floats in \[0, 1\]"):
        simulate_local_update(model, images * 255, labels, lr=0.1, batch_size=2)
    # A finite learning rate so large that the second step overflows float32.
    with pytest.raises(ValueError, match="update contains NaN or infinite"):
        simulate_local_update(
            model, images, labels, lr=1e20, local_epochs=3, batch_size=1
        )


def test_simulate_integer_settings_from_numpy():
    model, images, labels = small_mlp_case()
    expected = simulate_local_update(
        model, images, labels, lr=0.1, local_epochs=2, batch_size=1
    )

    numpy_settings = simulate_local_update(
        model,
        images,
        labels,
        lr=np.float32(0.1),
        local_epochs=np.int64(2),
        batch_size=np.int32(1),
    )

    assert largest_difference(numpy_settings, expected) < 1e-6
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got True"):
        simulate_local_update(model, images, labels, lr=0.1, batch_size=True)
    with pytest.raises(ValueError, match="local_epochs must be an int >= 1"):
        simulate_local_update(
            model, images, labels, lr=0.1, batch_size=1, local_epochs=np.int64(0)
        )
    with pytest.raises(ValueError, match="lr must be a number, got True"):
        simulate_local_update(model, images, labels, lr=True, batch_size=1)


# Label inference.


@pytest.mark.parametrize("local_epochs", [1, 3])
def test_infer_label_reads_one_image_update(data, local_epochs):
    model = SkinLesionCNN(width=8, side=SIDE, seed=5)
    found = []
    for label in range(7):
        index = int(np.flatnonzero(data.labels == label)[0])
        hospital = one_hospital(data.images[[index]], data.labels[[index]])
        update = hospital.train(
            model, local_epochs=local_epochs, lr=LR, batch_size=1, momentum=0.9
        )
        found.append(infer_label(model, update))

    assert found == list(range(7))


def test_infer_label_without_bias_uses_weight_rows(data):
    class NoBiasHead(nn.Module):
        def __init__(self):
            super().__init__()
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self.features = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 16))
                self.head = nn.Linear(16, 7, bias=False)

        def forward(self, x):
            return self.head(F.relu(self.features(x)))

    model = NoBiasHead()
    index = int(np.flatnonzero(data.labels == 2)[0])
    hospital = one_hospital(data.images[[index]], data.labels[[index]])
    update = hospital.train(model, local_epochs=1, lr=LR, batch_size=1)

    assert infer_label(model, update) == 2


def test_infer_label_rejects_bad_input(data):
    model = SkinLesionCNN(width=8, side=SIDE, seed=0)
    update = one_hospital(data.images[:2], data.labels[:2]).train(
        model, local_epochs=1, lr=LR, batch_size=2
    )
    with pytest.raises(ValueError, match="one image"):
        infer_label(model, update)

    convolutional = nn.Sequential(nn.Conv2d(3, 7, 28), nn.Flatten())
    single = Update(
        "north",
        {k: torch.ones_like(v) for k, v in convolutional.state_dict().items()},
        1,
        0.0,
    )
    with pytest.raises(ValueError, match="no nn.Linear"):
        infer_label(convolutional, single)


# The inversion attack.


def test_invert_undefended_image_above_18db(data):
    images, labels = data.images[[1]], data.labels[[1]]
    model = SkinLesionCNN(side=SIDE, seed=0)
    update = one_hospital(images, labels).train(
        model, local_epochs=1, lr=LR, batch_size=1
    )

    result = invert_update(model, update, lr=LR, batch_size=1, seed=0)
    quality = reconstruction_quality(images_to_tensor(images), result.images)

    assert isinstance(result, InversionResult)
    assert result.label_source == "inferred"
    assert result.labels.tolist() == labels.tolist()
    assert quality["mean_psnr"] >= 18
    assert result.matching_loss < 0.01
    assert len(result.loss_history) == 500
    assert result.images.min() >= 0
    assert result.images.max() <= 1


def test_invert_dp_noise_below_12db(data):
    images, labels = data.images[[1]], data.labels[[1]]
    model = SkinLesionCNN(side=SIDE, seed=0)
    update = dp_sgd_update(
        model,
        images_to_tensor(images),
        torch.as_tensor(labels),
        max_grad_norm=1.0,
        noise_multiplier=1.0,
        seed=0,
    )

    result = invert_update(model, update, lr=LR, batch_size=1, seed=0)
    quality = reconstruction_quality(images_to_tensor(images), result.images)

    assert quality["mean_psnr"] < 12
    assert result.matching_loss > 0.5


def test_invert_batch_optimises_soft_labels(data):
    images, labels = data.images[:2], data.labels[:2]
    model = SkinLesionCNN(width=8, side=SIDE, seed=0)
    update = one_hospital(images, labels).train(
        model, local_epochs=1, lr=LR, batch_size=2
    )
    settings = dict(lr=LR, batch_size=2, iterations=40, restarts=2, seed=7)

    first = invert_update(model, update, **settings)
    second = invert_update(model, update, **settings)

    assert first.label_source == "optimised"
    assert first.images.shape == (2, 3, SIDE, SIDE)
    assert first.soft_labels.shape == (2, 7)
    assert torch.allclose(first.soft_labels.sum(dim=1), torch.ones(2))
    assert first.labels.tolist() == first.soft_labels.argmax(dim=1).tolist()
    assert len(first.restart_losses) == 2
    assert first.matching_loss == min(first.restart_losses)
    assert torch.equal(first.images, second.images)


def test_invert_uses_given_labels(data):
    images, labels = data.images[:2], data.labels[:2]
    model = SkinLesionCNN(width=8, side=SIDE, seed=0)
    update = one_hospital(images, labels).train(
        model, local_epochs=1, lr=LR, batch_size=2
    )

    result = invert_update(
        model, update, lr=LR, batch_size=2, labels=labels, iterations=20
    )

    assert result.label_source == "given"
    assert result.labels.tolist() == labels.tolist()
    assert result.soft_labels is None


def test_invert_rejects_bad_input(data):
    images, labels = data.images[:1], data.labels[:1]
    model = SkinLesionCNN(width=8, side=SIDE, seed=0)
    update = one_hospital(images, labels).train(
        model, local_epochs=1, lr=LR, batch_size=1
    )
    other_model = SkinLesionCNN(width=4, side=SIDE, seed=0)
    zeros = Update("north", {k: 0 * v for k, v in update.delta.items()}, 1, 0.0)
    empty = Update("north", update.delta, 0, 0.0)

    with pytest.raises(ValueError, match="does not match the model"):
        invert_update(other_model, update, lr=LR, batch_size=1)
    with pytest.raises(ValueError, match="all zeros"):
        invert_update(model, zeros, lr=LR, batch_size=1)
    with pytest.raises(ValueError, match="at least 1"):
        invert_update(model, empty, lr=LR, batch_size=1)
    with pytest.raises(ValueError, match="labels must have shape"):
        invert_update(model, update, lr=LR, batch_size=1, labels=[1, 2])
    with pytest.raises(ValueError, match="iterations"):
        invert_update(model, update, lr=LR, batch_size=1, iterations=0)
    with pytest.raises(ValueError, match="tv_weight"):
        invert_update(model, update, lr=LR, batch_size=1, tv_weight=-1.0)
    with pytest.raises(ValueError, match="lr must be positive"):
        invert_update(model, update, lr=-1.0, batch_size=1)
    with pytest.raises(TypeError, match="Update"):
        invert_update(model, update.delta, lr=LR, batch_size=1)


def test_invert_rejects_bad_labels_and_weights():
    model, images, labels = small_mlp_case()
    delta = simulate_local_update(model, images[:1], labels[:1], lr=0.1, batch_size=1)
    update = Update("north", delta, 1, 0.0)
    settings = dict(lr=0.1, batch_size=1, iterations=2, progress=False)

    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2, got 9\.\.9"):
        invert_update(model, update, labels=torch.tensor([9]), **settings)
    with pytest.raises(TypeError, match="integer class indices"):
        invert_update(model, update, labels=np.array([1.5]), **settings)
    with pytest.raises(ValueError, match=r"one entry per class \(3\)"):
        invert_update(model, update, class_weights=torch.ones(7), **settings)
    with pytest.raises(ValueError, match="class_weights are all 0"):
        invert_update(model, update, class_weights=torch.zeros(3), **settings)
    # The label inferred from this update is 0, whose weight would be 0.
    with pytest.raises(ValueError, match=r"0 for class indices \[0\]"):
        invert_update(
            model, update, class_weights=torch.tensor([0.0, 1.0, 1.0]), **settings
        )


def test_invert_integer_settings_from_numpy():
    model, images, labels = small_mlp_case()
    delta = simulate_local_update(model, images[:1], labels[:1], lr=0.1, batch_size=1)
    update = Update("north", delta, 1, 0.0)
    settings = dict(lr=0.1, batch_size=1, progress=False)

    plain = invert_update(model, update, iterations=3, restarts=2, seed=1, **settings)
    numpy_ints = invert_update(
        model,
        update,
        iterations=np.int64(3),
        restarts=np.int32(2),
        seed=np.int64(1),
        side=np.int64(8),
        **settings,
    )

    assert torch.equal(plain.images, numpy_ints.images)
    assert len(numpy_ints.loss_history) == 3
    with pytest.raises(ValueError, match="iterations must be an int >= 1, got True"):
        invert_update(model, update, iterations=True, **settings)
    with pytest.raises(ValueError, match="restarts must be an int >= 1"):
        invert_update(model, update, iterations=2, restarts=2.0, **settings)
    with pytest.raises(ValueError, match="step_size must be finite"):
        invert_update(model, update, iterations=2, step_size=math.inf, **settings)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        invert_update(model, update, iterations=2, seed=-1, **settings)


def test_total_variation_known_values():
    flat = torch.full((1, 3, 4, 4), 0.3)
    stripes = torch.zeros(1, 3, 4, 4)
    stripes[..., 1::2] = 1.0  # columns alternate 0, 1, 0, 1

    assert float(total_variation(flat)) == 0.0
    assert float(total_variation(stripes)) == pytest.approx(1.0)


# Reconstruction quality.


def test_psnr_known_values():
    truth = torch.full((2, 3, 8, 8), 0.5)
    guess = truth.clone()
    guess[1] += 0.1  # mean squared error 0.01

    values = psnr(truth, guess)

    assert values[0] == math.inf
    assert values[1] == pytest.approx(20.0, abs=1e-4)


def test_psnr_accepts_uint8_arrays():
    truth = np.full((1, 8, 8, 3), 100, dtype=np.uint8)
    guess = np.full((1, 8, 8, 3), 110, dtype=np.uint8)

    expected = 10 * math.log10(1 / (10 / 255) ** 2)
    assert psnr(truth, guess)[0] == pytest.approx(expected, abs=1e-3)


def test_ssim_constant_images_luminance_term():
    a, b = 0.3, 0.6
    truth = torch.full((1, 3, 16, 16), a)
    guess = torch.full((1, 3, 16, 16), b)
    c1 = 0.01**2

    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    assert ssim(truth, guess)[0] == pytest.approx(expected, abs=1e-9)
    assert ssim(truth, truth)[0] == pytest.approx(1.0)


def test_ssim_drops_with_noise(data):
    truth = images_to_tensor(data.images[:2])
    generator = torch.Generator().manual_seed(0)
    noisy = (truth + 0.2 * torch.randn(truth.shape, generator=generator)).clamp(0, 1)

    values = ssim(truth, noisy)

    assert np.all(values < 0.8)
    assert np.all(values > 0)
    with pytest.raises(ValueError, match="at least 11 pixels"):
        ssim(truth[..., :8, :8], truth[..., :8, :8])


def test_quality_matches_permuted_images(data):
    truth = images_to_tensor(data.images[:4])
    generator = torch.Generator().manual_seed(0)
    noisy = (truth + 0.02 * torch.randn(truth.shape, generator=generator)).clamp(0, 1)
    permutation = [2, 0, 3, 1]

    quality = reconstruction_quality(truth, noisy[permutation])

    # True image i sits at the position of i in the permutation.
    assert quality["assignment"].tolist() == [1, 3, 0, 2]
    assert np.allclose(quality["psnr"], psnr(truth, noisy))
    assert np.allclose(quality["ssim"], ssim(truth, noisy))
    assert quality["mean_psnr"] == pytest.approx(float(np.mean(psnr(truth, noisy))))


def test_quality_small_images_skip_ssim():
    truth = torch.full((2, 3, 8, 8), 0.5)

    quality = reconstruction_quality(truth, truth.flip(0) + 0.1)

    assert quality["ssim"] is None
    assert quality["mean_ssim"] is None
    assert np.allclose(quality["psnr"], 20.0, atol=1e-4)


def test_quality_rejects_bad_input(data):
    truth = images_to_tensor(data.images[:2])

    with pytest.raises(ValueError, match="same shape"):
        reconstruction_quality(truth, truth[:1])
    with pytest.raises(ValueError, match="empty"):
        reconstruction_quality(truth[:0], truth[:0])
    with pytest.raises(TypeError, match="float tensor"):
        reconstruction_quality(truth, [1, 2])


def test_quality_rejects_values_outside_unit_range():
    truth = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with_nan = truth.clone()
    with_nan[1, 0, 0, 0] = math.nan

    for score in (psnr, ssim, reconstruction_quality):
        with pytest.raises(
            ValueError, match=r"reconstructed must be floats in \[0, 1\], got NaN"
        ):
            score(truth, with_nan)
        with pytest.raises(
            ValueError, match=r"true_images must be floats in \[0, 1\].*255"
        ):
            score(truth * 255, truth * 255)
        with pytest.raises(ValueError, match=r"must be floats in \[0, 1\]"):
            score(truth, truth - 0.5)


def test_psnr_float64_stays_float64():
    truth = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)

    values = psnr(truth, truth + 1e-9)
    mixed = psnr(truth.float(), truth + 1e-3)

    # An error of 1e-18 is 180 dB; float32 would round the 1e-9 shift away.
    assert values.dtype == np.float64
    assert values[0] == pytest.approx(180.0, abs=1e-3)
    assert mixed[0] == pytest.approx(60.0, abs=1e-3)


def test_plot_reconstructions_draws_pairs(data):
    truth = images_to_tensor(data.images[:3])

    fig = plot_reconstructions(
        truth, truth.flip(0), assignment=[2, 1, 0], psnr_values=[20.0, 21.5, 19.0]
    )

    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6
    assert fig.axes[3].get_xlabel() == "20.0 dB"
    shown = fig.axes[3].images[0].get_array()
    assert np.allclose(shown, truth[0].permute(1, 2, 0).numpy())


# Membership inference: scores.


class FixedLogits(nn.Module):
    """Return the same logits for every image, to test the score formulas."""

    side = 4

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits[: len(x)]


def test_example_losses_match_cross_entropy(data):
    model = SkinLesionCNN(width=8, side=SIDE, seed=0)
    images, labels = data.images[:5], data.labels[:5]

    losses = example_losses(model, images, labels)

    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(
            model(images_to_tensor(images)), torch.as_tensor(labels), reduction="none"
        )
    assert losses.shape == (5,)
    assert np.allclose(losses, expected.numpy(), atol=1e-6)
    assert np.allclose(
        loss_threshold_scores(model, images_to_tensor(images), labels), -losses
    )


def test_logit_confidence_matches_definition():
    logits = [[2.0, 0.0, -1.0], [0.0, 50.0, -50.0]]
    model = FixedLogits(logits)
    images = torch.zeros(2, 3, 4, 4)

    values = logit_confidence(model, images, np.array([0, 1]))

    p = torch.softmax(torch.tensor(logits[0], dtype=torch.float64), dim=0)[0]
    assert values[0] == pytest.approx(float(torch.log(p / (1 - p))))
    assert values[1] == pytest.approx(50.0, abs=1e-6)  # p rounds to 1 in float32


def test_calibrated_scores_formula():
    images = torch.zeros(2, 3, 4, 4)
    labels = np.array([0, 0])
    target = FixedLogits([[3.0, 0.0], [1.0, 0.0]])
    references = [
        FixedLogits([[1.0, 0.0], [1.0, 0.0]]),
        FixedLogits([[2.0, 0.0], [0.0, 0.0]]),
        FixedLogits([[0.0, 0.0], [2.0, 0.0]]),
    ]
    # With two classes, the logit-scaled confidence is the logit difference.
    mean = np.array([1.0, 1.0])
    per_example_std = np.array([1.0, 1.0])

    pooled = calibrated_scores(target, references, images, labels)
    per_example = calibrated_scores(
        target, references, images, labels, per_example_variance=True
    )
    single = calibrated_scores(target, references[:1], images, labels)

    assert np.allclose(per_example, (np.array([3.0, 1.0]) - mean) / per_example_std)
    assert np.allclose(pooled, [2.0, 0.0])
    assert np.allclose(single, [2.0, 0.0])
    with pytest.raises(ValueError, match="at least 2 reference"):
        calibrated_scores(
            target, references[:1], images, labels, per_example_variance=True
        )
    with pytest.raises(ValueError, match="at least 1 reference"):
        calibrated_scores(target, [], images, labels)


def test_scores_reject_bad_input(data):
    model = SkinLesionCNN(width=8, side=SIDE, seed=0)
    images = images_to_tensor(data.images[:3])

    with pytest.raises(ValueError, match="one per image"):
        example_losses(model, images, data.labels[:2])
    with pytest.raises(ValueError, match="empty"):
        example_losses(model, images[:0], data.labels[:0])
    with pytest.raises(TypeError, match="integer class indices"):
        example_losses(model, images, np.zeros(3))
    with pytest.raises(ValueError, match=r"lie in 0\.\.6"):
        loss_threshold_scores(model, images, np.array([0, 7, 1]))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        logit_confidence(model, images[:, 0], data.labels[:3])


# Membership inference: measuring an attack.


def test_membership_roc_known_values():
    result = membership_roc(np.array([5.0, 6.0, 7.0]), np.array([0.0, 1.0, 6.5]))

    assert isinstance(result, MembershipResult)
    # 7 of the 9 member/non-member pairs rank the member higher.
    assert result.auc == pytest.approx(7 / 9)
    # Only the member scored 7 lies above every non-member.
    assert result.tpr_at_low_fpr == pytest.approx(1 / 3)
    assert result.fpr[0] == 0
    assert result.fpr[-1] == 1
    assert result.tpr[-1] == 1
    assert result.n_members == 3
    assert result.n_nonmembers == 3


def test_membership_roc_rejects_bad_input():
    scores = np.array([0.1, 0.2])

    with pytest.raises(ValueError, match="as many members as non-members"):
        membership_roc(scores, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="member_scores is empty"):
        membership_roc(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="nonmember_scores is empty"):
        membership_roc(scores, np.array([]))
    with pytest.raises(ValueError, match="1-D"):
        membership_roc(scores[:, None], scores[:, None])
    with pytest.raises(ValueError, match="NaN"):
        membership_roc(np.array([0.1, np.nan]), scores)
    with pytest.raises(ValueError, match="low_fpr"):
        membership_roc(scores, scores, low_fpr=0.0)


def test_membership_split_parts_are_disjoint():
    lesions = np.repeat([f"lesion{i}" for i in range(60)], 2)
    sites = np.where(np.arange(120) < 80, "x", "y")
    candidates = np.arange(100)  # the last 10 lesions are never candidates

    result = membership_split(lesions, candidates=candidates, strata=sites, seed=0)
    again = membership_split(lesions, candidates=candidates, strata=sites, seed=0)

    parts = [result.target, result.nonmembers, result.reference]
    lesion_sets = [set(lesions[part]) for part in parts]
    assert not lesion_sets[0] & lesion_sets[1]
    assert not lesion_sets[0] & lesion_sets[2]
    assert not lesion_sets[1] & lesion_sets[2]
    assert set(result.members) <= set(result.target)
    assert len(result.members) == len(result.nonmembers)
    assert sites[result.members].tolist() == sites[result.nonmembers].tolist()
    assert np.all(np.concatenate(parts) < 100)
    # Shares 0.5, 0.25, 0.25 of 100 candidate images, in whole lesions of two.
    assert abs(len(result.target) - 50) <= 4
    assert abs(len(result.reference) - 25) <= 4
    assert np.array_equal(result.members, again.members)
    assert np.array_equal(result.reference, again.reference)


def test_membership_split_lesion_in_two_strata():
    lesions = np.array(["a", "a", "b", "c", "d", "e", "f", "g"])
    sites = np.array(["x", "y", "x", "x", "y", "y", "x", "y"])

    result = membership_split(lesions, strata=sites, shares=(0.4, 0.3, 0.3), seed=3)

    # Images 0 and 1 show lesion a, at two sites: both belong to one part.
    assert set(result.target) & {0, 1} in (set(), {0, 1})
    assert set(result.reference) & {0, 1} in (set(), {0, 1})


def test_membership_split_rejects_bad_input():
    lesions = np.array(["a", "b", "c"])

    with pytest.raises(ValueError, match="one length"):
        membership_split(lesions, strata=np.array(["x"]))
    with pytest.raises(ValueError, match="summing to 1"):
        membership_split(lesions, shares=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="summing to 1"):
        membership_split(lesions, shares=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="candidates is empty"):
        membership_split(lesions, candidates=np.array([], dtype=int))
    with pytest.raises(ValueError, match="No stratum"):
        membership_split(np.array(["a"]))


def test_membership_split_rejects_bad_candidates():
    lesions = np.repeat(np.arange(20), 2)

    with pytest.raises(ValueError, match=r"candidates contains image indices more"):
        membership_split(lesions, candidates=np.r_[np.arange(40), np.arange(40)])
    with pytest.raises(
        ValueError, match=r"candidates must be image indices in 0\.\.39"
    ):
        membership_split(lesions, candidates=np.array([-1, 0, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match=r"in 0\.\.39 .*got \[100\]"):
        membership_split(lesions, candidates=np.array([0, 1, 100]))
    with pytest.raises(ValueError, match=r"boolean mask.*np\.flatnonzero\(mask\)"):
        membership_split(lesions, candidates=np.ones(40, dtype=bool))
    with pytest.raises(ValueError, match="candidates must be integer image indices"):
        membership_split(lesions, candidates=np.array([0.0, 1.5, 2.0]))
    with pytest.raises(ValueError, match="candidates must be a 1-D array"):
        membership_split(lesions, candidates=np.arange(40).reshape(4, 10))


def test_membership_split_rejects_missing_ids():
    with pytest.raises(ValueError, match=r"lesion_ids contains NaN or None .*\[1\]"):
        membership_split(np.array([1.0, np.nan, 2.0, 3.0]))
    with pytest.raises(ValueError, match="lesion_ids contains NaN or None"):
        membership_split(np.array(["a", None, "b", "c"], dtype=object))
    with pytest.raises(ValueError, match=r"strata contains NaN or None .*\[0\]"):
        membership_split(
            np.array(["a", "b", "c", "d"]), strata=np.array([np.nan, 1.0, 1.0, 1.0])
        )


def test_membership_split_numpy_seed():
    lesions = np.repeat(np.arange(30), 2)

    plain = membership_split(lesions, candidates=np.arange(50), seed=4)
    numpy_ints = membership_split(
        lesions, candidates=np.arange(50, dtype=np.uint16), seed=np.int64(4)
    )

    assert np.array_equal(plain.members, numpy_ints.members)
    assert np.array_equal(plain.reference, numpy_ints.reference)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got True"):
        membership_split(lesions, seed=True)


def memorisation_pool(n_images, *, seed):
    """Make random 8 px images whose labels a model can only memorise.

    Half of the labels follow one fixed linear rule of the pixels, shared by every
    pool, and half are drawn at random. A model trained on a pool fits it almost
    exactly but cannot predict the random half of another pool, so its losses
    separate members from non-members.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_images, 8, 8, 3), dtype=np.uint8)
    labels = np.argmax((images.reshape(n_images, -1) / 255 - 0.5) @ LABEL_RULE, axis=1)
    random = rng.random(n_images) < 0.5
    labels[random] = rng.integers(0, 7, int(random.sum()))
    return images_to_tensor(images), labels


@pytest.fixture(scope="module")
def membership_setting():
    """Train an overfit target, reference models and a model that never saw it.

    Five independent pools: members, non-members, two reference training sets
    and the unseen model's training set.
    """
    pools = [memorisation_pool(POOL_SIZE, seed=seed) for seed in range(1, 6)]

    def train(pool, seed):
        model = PixelMLP(side=8, seed=seed)
        train_pooled(
            model,
            *pool,
            epochs=MLP_EPOCHS,
            lr=MLP_LR,
            batch_size=32,
            seed=seed,
            step_options={"momentum": 0.9},
        )
        return model

    return {
        "members": pools[0],
        "nonmembers": pools[1],
        "overfit": train(pools[0], 1),
        "references": [train(pools[2], 2), train(pools[3], 3)],
        "unseen": train(pools[4], 4),
    }


def attack_results(setting, target):
    member_x, member_y = setting["members"]
    other_x, other_y = setting["nonmembers"]
    references = setting["references"]
    loss = membership_roc(
        loss_threshold_scores(target, member_x, member_y),
        loss_threshold_scores(target, other_x, other_y),
    )
    calibrated = membership_roc(
        calibrated_scores(target, references, member_x, member_y),
        calibrated_scores(target, references, other_x, other_y),
    )
    return loss, calibrated


def test_attacks_detect_overfit_model(membership_setting):
    loss, calibrated = attack_results(membership_setting, membership_setting["overfit"])

    assert loss.n_members >= 500
    assert loss.n_nonmembers >= 500
    assert loss.auc >= 0.6
    assert calibrated.auc >= 0.6
    assert calibrated.tpr_at_low_fpr > loss.tpr_at_low_fpr


def test_attacks_guess_on_unseen_model(membership_setting):
    loss, calibrated = attack_results(membership_setting, membership_setting["unseen"])

    assert abs(loss.auc - 0.5) <= 0.05
    assert abs(calibrated.auc - 0.5) <= 0.05


def test_train_reference_models_are_seeded(data):
    x, y = data.images[:60], data.labels[:60]
    settings = dict(n_models=2, fraction=0.5, epochs=1, lr=LR, seed=3)

    def build():
        return SkinLesionCNN(width=4, side=SIDE, seed=0)

    first = train_reference_models(build, x, y, **settings)
    second = train_reference_models(build, x, y, **settings)

    assert len(first) == 2
    assert largest_difference(first[0].state_dict(), second[0].state_dict()) == 0
    assert largest_difference(first[0].state_dict(), first[1].state_dict()) > 0
    assert largest_difference(first[0].state_dict(), build().state_dict()) > 0
    state = torch.random.get_rng_state()
    unseeded = train_reference_models(
        lambda: SkinLesionCNN(width=4, side=SIDE), x, y, **settings
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    again = train_reference_models(
        lambda: SkinLesionCNN(width=4, side=SIDE), x, y, **settings
    )
    assert largest_difference(unseeded[1].state_dict(), again[1].state_dict()) == 0
    with pytest.raises(ValueError, match="n_models"):
        train_reference_models(build, x, y, **{**settings, "n_models": 0})
    with pytest.raises(ValueError, match="fraction"):
        train_reference_models(build, x, y, **{**settings, "fraction": 0.0})


def test_train_reference_models_checks_input():
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = np.array([0, 1, 2, 0, 1, 2])
    settings = dict(n_models=1, epochs=1, lr=0.1, batch_size=2, seed=0)

    def build():
        return PixelMLP(n_classes=3, hidden=4, side=8)

    plain = train_reference_models(build, images, labels, **settings)
    numpy_ints = train_reference_models(
        build,
        images,
        labels,
        n_models=np.int64(1),
        epochs=np.int32(1),
        lr=0.1,
        batch_size=np.int64(2),
        seed=np.int64(0),
    )

    assert largest_difference(plain[0].state_dict(), numpy_ints[0].state_dict()) == 0
    with pytest.raises(ValueError, match="got 5 labels .* for 6 images"):
        train_reference_models(build, images, labels[:5], **settings)
    with pytest.raises(ValueError, match="got 7 labels .* for 6 images"):
        train_reference_models(build, images, np.r_[labels, 0], **settings)
    with pytest.raises(ValueError, match="n_models must be an int >= 1, got True"):
        train_reference_models(build, images, labels, **{**settings, "n_models": True})
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train_reference_models(build, images, labels, **{**settings, "epochs": 1.0})
    with pytest.raises(ValueError, match="fraction must be finite"):
        train_reference_models(build, images, labels, fraction=math.nan, **settings)
    with pytest.raises(ValueError, match="fraction must be a number, got True"):
        train_reference_models(build, images, labels, fraction=True, **settings)


def test_pixel_mlp_interface():
    model = PixelMLP(hidden=8, side=8, seed=0)
    same = PixelMLP(hidden=8, side=8, seed=0)

    logits = model(torch.rand(5, 3, 8, 8))

    assert logits.shape == (5, 7)
    assert torch.equal(model.hidden.weight, same.hidden.weight)
    with pytest.raises(ValueError, match=r"\(N, 3, 8, 8\)"):
        model(torch.rand(5, 3, 9, 9))
    with pytest.raises(ValueError, match="hidden"):
        PixelMLP(hidden=0)
    with pytest.raises(ValueError, match="side must be an int >= 1, got True"):
        PixelMLP(side=True)
    assert PixelMLP(hidden=np.int64(4), side=np.int64(8), seed=np.int64(0)).side == 8


# The differential-privacy region.


def test_dp_roc_bound_values():
    e = math.e

    assert dp_roc_bound(1.0, 0.0, 0.1) == pytest.approx(e * 0.1)
    assert dp_roc_bound(1.0, 0.0, 0.9) == pytest.approx(1 - 0.1 / e)
    assert dp_roc_bound(1.0, 1e-3, 0.01) == pytest.approx(e * 0.01 + 1e-3)
    assert dp_roc_bound(0.0, 0.0, 0.3) == pytest.approx(0.3)
    assert dp_roc_bound(2.0, 0.1, 1.0) == 1.0

    grid = np.array([0.0, 0.5, 1.0])
    bound = dp_roc_bound(1.0, 0.0, grid)
    assert isinstance(bound, np.ndarray)
    assert bound.shape == (3,)
    assert np.all(np.diff(bound) >= 0)


def test_dp_roc_bound_large_epsilon():
    # e^1000 overflows a float, but e^1000 * FPR only matters below 1.
    assert dp_roc_bound(1000, 0.0, 0.1) == 1.0
    assert dp_roc_bound(1000.0, 0.0, 0.0) == 0.0
    assert dp_roc_bound(1000, 0.01, 0.0) == pytest.approx(0.01)
    assert dp_roc_bound(800.0, 0.0, 1e-300) == 1.0
    assert dp_roc_bound(50.0, 0.0, 1e-30) == pytest.approx(math.exp(50) * 1e-30)
    grid = np.array([0.0, 1e-6, 0.5, 1.0])
    assert np.array_equal(dp_roc_bound(1e6, 0.0, grid), [0.0, 1.0, 1.0, 1.0])


def test_dp_roc_bound_number_types():
    assert dp_roc_bound(np.int64(1), np.float32(0.0), 0.1) == pytest.approx(
        math.e * 0.1
    )
    assert dp_roc_bound(np.float64(1.0), 0, [0.1, 0.2]).tolist() == pytest.approx(
        [math.e * 0.1, math.e * 0.2]
    )
    with pytest.raises(ValueError, match="epsilon must be a number >= 0, got True"):
        dp_roc_bound(True, 0.0, 0.1)
    with pytest.raises(ValueError, match="delta must be a number in"):
        dp_roc_bound(1.0, False, 0.1)
    with pytest.raises(ValueError, match="fpr must be a number or an array"):
        dp_roc_bound(1.0, 0.0, "a")
    with pytest.raises(ValueError, match="fpr must be a number or an array"):
        dp_roc_bound(1.0, 0.0, np.array([True, False]))


def test_dp_roc_bound_rejects_bad_input():
    with pytest.raises(ValueError, match="epsilon must be a number >= 0"):
        dp_roc_bound(-1.0, 0.0, 0.1)
    with pytest.raises(ValueError, match="epsilon must be finite"):
        dp_roc_bound(math.inf, 0.0, 0.1)
    with pytest.raises(ValueError, match="delta"):
        dp_roc_bound(1.0, 1.0, 0.1)
    with pytest.raises(ValueError, match="delta"):
        dp_roc_bound(1.0, -0.1, 0.1)
    with pytest.raises(ValueError, match="fpr"):
        dp_roc_bound(1.0, 0.0, np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="fpr"):
        dp_roc_bound(1.0, 0.0, math.nan)


def test_plot_roc_draws_curves_and_bounds():
    result = membership_roc(np.array([5.0, 6.0, 7.0]), np.array([0.0, 1.0, 6.5]))

    fig = plot_roc({"loss": result}, dp_bounds={"epsilon 1": (1.0, 1e-5)})

    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["guessing", "loss (AUC 0.78)", "epsilon 1"]
    bound_line = ax.get_lines()[2]
    x, y = bound_line.get_data()
    assert np.allclose(y, dp_roc_bound(1.0, 1e-5, x))
    with pytest.raises(ValueError, match="results is empty"):
        plot_roc({})
