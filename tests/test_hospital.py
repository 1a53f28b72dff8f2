"""Tests for the virtual hospital and the default local-training step."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from helpers.datasets import SkinLesionData, images_to_tensor
from helpers.hospital import (
    Hospital,
    LeaveFederation,
    Update,
    clip_update,
    make_hospitals,
    sgd_local_step,
)
from helpers.metrics import classification_metrics
from helpers.models import SkinLesionCNN, class_weights, predict_proba
from helpers.splits import Partition

SIDE = 8


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


def random_part(n, *, seed, side=SIDE, n_classes=3):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, n_classes, size=n).astype(np.int64)
    return images, labels


def make_hospital(name="north", *, n_train=20, n_val=6, n_test=6, seed=0):
    return Hospital(
        name,
        train=random_part(n_train, seed=seed),
        val=random_part(n_val, seed=seed + 1),
        test=random_part(n_test, seed=seed + 2),
    )


def tiny_model(seed=0):
    return SkinLesionCNN(width=4, groups=2, side=SIDE, seed=seed)


def as_dataset(images, labels):
    return TensorDataset(images_to_tensor(images), torch.as_tensor(labels))


def state_copy(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def distance(state, reference):
    return math.sqrt(sum(float(((state[k] - reference[k]) ** 2).sum()) for k in state))


class IndexModel(nn.Module):
    """A linear model that records which examples each forward pass saw.

    The red value of pixel (0, 0) encodes the example index as index / 255.
    """

    n_classes = 7

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * SIDE * SIDE, self.n_classes)
        self.batches = []

    def forward(self, x):
        self.batches.append(torch.round(x[:, 0, 0, 0] * 255).long().tolist())
        return self.linear(x.flatten(1))


def indexed_dataset(n):
    images = np.zeros((n, SIDE, SIDE, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return as_dataset(images, np.arange(n) % 7)


# The public surface.


def test_hospital_public_surface():
    train = random_part(20, seed=0)
    hospital = Hospital(
        "north", train=train, val=random_part(6, seed=1), test=random_part(0, seed=2)
    )

    assert hospital.name == "north"
    assert hospital.n_samples == 20
    np.testing.assert_array_equal(
        hospital.label_histogram, np.bincount(train[1], minlength=7)
    )
    assert hospital.label_histogram.shape == (7,)
    assert dir(hospital) == [
        "clipping_log",
        "evaluate",
        "label_histogram",
        "n_samples",
        "name",
        "train",
    ]
    assert repr(hospital) == "Hospital(name='north', n_samples=20)"


def test_label_histogram_read_only():
    hospital = make_hospital()

    with pytest.raises(ValueError, match="read-only"):
        hospital.label_histogram[0] = 99


@pytest.mark.parametrize(
    "attribute",
    ["images", "labels", "data", "x", "y", "train_images", "raw_data", "test", "val"],
)
def test_raw_data_access_raises_permission_error(attribute):
    hospital = make_hospital()

    with pytest.raises(PermissionError, match="never sends its images") as error:
        getattr(hospital, attribute)
    assert "'north'" in str(error.value)
    assert "teaching device, not a security boundary" in str(error.value)


def test_unknown_attribute_raises_attribute_error():
    hospital = make_hospital()

    with pytest.raises(AttributeError, match="no attribute 'colour'"):
        _ = hospital.colour
    with pytest.raises(AttributeError, match="no attribute '_missing'"):
        _ = hospital._missing


def test_hospital_rejects_empty_train():
    with pytest.raises(ValueError, match="'south' has no training images"):
        Hospital(
            "south",
            train=random_part(0, seed=0),
            val=random_part(4, seed=1),
            test=random_part(4, seed=2),
        )


def test_hospital_rejects_bad_parts():
    images, labels = random_part(4, seed=0)
    good = random_part(4, seed=1)

    with pytest.raises(TypeError, match="train images must be uint8"):
        Hospital("h", train=(images.astype(np.float32), labels), val=good, test=good)
    with pytest.raises(ValueError, match="one label per image"):
        Hospital("h", train=(images, labels[:3]), val=good, test=good)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.6"):
        Hospital("h", train=(images, labels + 7), val=good, test=good)
    with pytest.raises(ValueError, match=r"shape \(N, side, side, 3\)"):
        Hospital("h", train=(images[..., :1], labels), val=good, test=good)
    with pytest.raises(TypeError, match="labels must be integers"):
        Hospital("h", train=(images, labels.astype(float)), val=good, test=good)
    with pytest.raises(TypeError, match="must be a pair"):
        Hospital("h", train=[images, labels], val=good, test=good)
    larger = random_part(4, seed=2, side=16)
    with pytest.raises(ValueError, match="different sides"):
        Hospital("h", train=(images, labels), val=larger, test=good)


# Hospital.train.


def test_train_does_not_mutate_model():
    hospital = make_hospital()
    model = tiny_model()
    model.eval()
    before = state_copy(model)

    hospital.train(model, local_epochs=2, lr=0.5)

    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.training


def test_update_is_trained_minus_global():
    train = random_part(20, seed=0)
    hospital = Hospital(
        "north", train=train, val=random_part(3, seed=1), test=random_part(3, seed=2)
    )
    model = tiny_model()
    reference = tiny_model()

    update = hospital.train(model, local_epochs=2, lr=0.1, batch_size=8, seed=3)

    generator = torch.Generator().manual_seed(3)
    loss = sgd_local_step(
        reference,
        as_dataset(*train),
        local_epochs=2,
        lr=0.1,
        batch_size=8,
        generator=generator,
    )
    assert isinstance(update, Update)
    assert update.hospital == "north"
    assert update.n_samples == 20
    assert update.train_loss == pytest.approx(loss)
    assert update.delta.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(
            value + update.delta[key], reference.state_dict()[key]
        )
    assert any(float(d.abs().max()) > 0 for d in update.delta.values())


def test_train_repeatable_from_seed():
    hospital = make_hospital()
    model = tiny_model()

    first = hospital.train(model, local_epochs=1, lr=0.1, seed=1)
    again = hospital.train(model, local_epochs=1, lr=0.1, seed=1)
    other = hospital.train(model, local_epochs=1, lr=0.1, seed=2, batch_size=4)

    for key in first.delta:
        assert torch.equal(first.delta[key], again.delta[key])
    assert not torch.equal(first.delta["head.weight"], other.delta["head.weight"])


def test_train_spares_global_rng():
    hospital = make_hospital()
    torch.manual_seed(11)
    expected = torch.rand(2)
    torch.manual_seed(11)

    hospital.train(tiny_model(), local_epochs=1, lr=0.1)

    assert torch.equal(torch.rand(2), expected)


def test_train_passes_options_to_local_step():
    hospital = make_hospital(n_train=12)
    calls = []

    def recording_step(model, dataset, **options):
        calls.append((len(dataset), options))
        with torch.no_grad():
            model.head.bias += 1.0
        return 0.25

    update = hospital.train(
        tiny_model(),
        local_epochs=3,
        lr=0.2,
        batch_size=5,
        seed=4,
        local_step=recording_step,
        proximal_mu=0.5,
    )

    assert len(calls) == 1
    n_images, options = calls[0]
    assert n_images == 12
    assert options["local_epochs"] == 3
    assert options["lr"] == 0.2
    assert options["batch_size"] == 5
    assert options["proximal_mu"] == 0.5
    assert isinstance(options["generator"], torch.Generator)
    assert update.train_loss == 0.25
    torch.testing.assert_close(update.delta["head.bias"], torch.ones(7))
    assert float(update.delta["head.weight"].abs().max()) == 0.0


# Hospital.evaluate.


def test_evaluate_matches_classification_metrics():
    test = random_part(9, seed=5)
    hospital = Hospital(
        "north", train=random_part(10, seed=0), val=random_part(4, seed=1), test=test
    )
    model = tiny_model()

    metrics = hospital.evaluate(model, split="test")

    expected = classification_metrics(
        test[1], predict_proba(model, images_to_tensor(test[0]))
    )
    assert metrics["n"] == 9
    assert metrics["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    np.testing.assert_array_equal(
        metrics["confusion_matrix"], expected["confusion_matrix"]
    )


def test_evaluate_default_split_is_val():
    hospital = make_hospital(n_val=5, n_test=8)

    assert hospital.evaluate(tiny_model())["n"] == 5
    assert hospital.evaluate(tiny_model(), split="train")["n"] == 20


def test_evaluate_empty_split():
    hospital = make_hospital(n_val=0)

    metrics = hospital.evaluate(tiny_model(), split="val")

    assert metrics["n"] == 0
    assert metrics["balanced_accuracy"] is None
    assert metrics["melanoma_auc"] is None
    np.testing.assert_array_equal(metrics["confusion_matrix"], np.zeros((7, 7)))


def test_evaluate_rejects_unknown_split():
    with pytest.raises(ValueError, match="split must be one of"):
        make_hospital().evaluate(tiny_model(), split="holdout")


# sgd_local_step.


def test_sgd_step_each_epoch_one_pass():
    model = IndexModel()

    sgd_local_step(
        model,
        indexed_dataset(10),
        local_epochs=3,
        lr=0.01,
        batch_size=4,
        generator=torch.Generator().manual_seed(0),
    )

    assert [len(batch) for batch in model.batches] == [4, 4, 2] * 3
    epochs = [sum(model.batches[3 * e : 3 * e + 3], []) for e in range(3)]
    for seen in epochs:
        assert sorted(seen) == list(range(10))
    assert epochs[0] != epochs[1]


def test_sgd_step_order_follows_generator():
    orders = []
    for seed in (0, 0, 1):
        model = IndexModel()
        sgd_local_step(
            model,
            indexed_dataset(12),
            local_epochs=1,
            lr=0.01,
            batch_size=12,
            generator=torch.Generator().manual_seed(seed),
        )
        orders.append(model.batches[0])

    assert orders[0] == orders[1]
    assert orders[0] != orders[2]


def test_sgd_step_returns_loss_before_step():
    images, labels = random_part(16, seed=0)
    dataset = as_dataset(images, labels)
    model = tiny_model()
    weights = class_weights(np.bincount(labels, minlength=7))
    x, y = dataset.tensors
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, weight=weights)

    loss = sgd_local_step(
        model,
        dataset,
        local_epochs=1,
        lr=0.1,
        batch_size=16,
        generator=torch.Generator().manual_seed(0),
        class_weights="balanced",
    )

    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_sgd_step_balanced_equals_explicit_weights():
    images, labels = random_part(20, seed=1)
    results = []
    for option in ("balanced", class_weights(np.bincount(labels, minlength=7)), None):
        model = tiny_model()
        sgd_local_step(
            model,
            as_dataset(images, labels),
            local_epochs=1,
            lr=0.1,
            batch_size=5,
            generator=torch.Generator().manual_seed(0),
            class_weights=option,
        )
        results.append(model.head.weight.detach().clone())

    torch.testing.assert_close(results[0], results[1])
    assert not torch.allclose(results[0], results[2])


def test_fedprox_keeps_weights_near_start():
    images, labels = random_part(32, seed=2)
    start = state_copy(tiny_model())
    distances = {}
    for mu in (0.0, 10.0):
        model = tiny_model()
        sgd_local_step(
            model,
            as_dataset(images, labels),
            local_epochs=3,
            lr=0.05,
            batch_size=8,
            generator=torch.Generator().manual_seed(0),
            proximal_mu=mu,
        )
        distances[mu] = distance(model.state_dict(), start)

    assert distances[0.0] > 0
    assert distances[10.0] < 0.7 * distances[0.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"local_epochs": 0}, "local_epochs must be an int >= 1"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"proximal_mu": -1.0}, "proximal_mu must be >= 0"),
        ({"momentum": 1.0}, r"momentum must lie in \[0, 1\)"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"class_weights": "inverse"}, "'balanced' or None"),
        ({"class_weights": torch.ones(3)}, "one entry per class"),
        ({"class_weights": torch.tensor([0.0] + [1.0] * 6)}, "are 0 for class"),
        ({"class_weights": torch.tensor([float("nan")] + [1.0] * 6)}, "finite"),
    ],
)
def test_sgd_step_rejects_bad_settings(options, message):
    images = np.zeros((4, SIDE, SIDE, 3), dtype=np.uint8)
    settings = {"local_epochs": 1, "lr": 0.1, "batch_size": 2} | options

    with pytest.raises(ValueError, match=message):
        sgd_local_step(
            tiny_model(),
            as_dataset(images, np.array([0, 0, 1, 2])),
            generator=torch.Generator(),
            **settings,
        )


def test_sgd_step_rejects_bad_dataset():
    empty = as_dataset(np.zeros((0, SIDE, SIDE, 3), dtype=np.uint8), np.zeros(0))
    options = {"local_epochs": 1, "lr": 0.1, "batch_size": 2}

    with pytest.raises(ValueError, match="dataset is empty"):
        sgd_local_step(tiny_model(), empty, generator=torch.Generator(), **options)
    with pytest.raises(TypeError, match="TensorDataset"):
        sgd_local_step(tiny_model(), [1, 2], generator=torch.Generator(), **options)


# make_hospitals.


def small_data(n=30, seed=0):
    images, labels = random_part(n, seed=seed, n_classes=7)
    ids = np.array([f"img{i}" for i in range(n)])
    return SkinLesionData(
        images=images,
        labels=labels,
        image_ids=ids,
        lesion_ids=ids,
        sites=None,
        official_split=None,
        name="synthetic",
        has_lesion_ids=False,
        metadata=pd.DataFrame({"image_id": ids}),
    )


def test_make_hospitals_splits_each_hospital():
    data = small_data()
    assignment = np.arange(30) % 3
    split = np.array(["train", "train", "val", "test", "train"] * 6)
    partition = Partition(("a", "b", "c"), assignment, "round robin")

    hospitals = make_hospitals(data, partition, split)

    assert [h.name for h in hospitals] == ["a", "b", "c"]
    for index, hospital in enumerate(hospitals):
        chosen = (assignment == index) & (split == "train")
        assert hospital.n_samples == chosen.sum()
        np.testing.assert_array_equal(
            hospital.label_histogram, np.bincount(data.labels[chosen], minlength=7)
        )
        for part in ("val", "test"):
            expected = ((assignment == index) & (split == part)).sum()
            assert hospital.evaluate(tiny_model(), split=part)["n"] == expected


def test_make_hospitals_rejects_bad_input():
    data = small_data()
    partition = Partition(("a", "b"), np.arange(30) % 2, "alternate")
    no_train_for_b = np.where(np.arange(30) % 2 == 0, "train", "test")

    with pytest.raises(ValueError, match="same images"):
        make_hospitals(data, partition, np.array(["train"] * 29))
    with pytest.raises(ValueError, match="invalid values"):
        make_hospitals(data, partition, np.array(["train"] * 29 + ["holdout"]))
    with pytest.raises(ValueError, match="'b' has no training images"):
        make_hospitals(data, partition, no_train_for_b)


def test_clip_update_scales_to_bound():
    delta = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}

    clipped, norm = clip_update(delta, max_norm=1.0)

    assert norm == pytest.approx(5.0)
    assert torch.allclose(clipped["a"], torch.tensor([0.6, 0.0]))
    assert torch.allclose(clipped["b"], torch.tensor([[0.8]]))
    assert torch.equal(delta["a"], torch.tensor([3.0, 0.0]))


def test_clip_update_leaves_small_update_unchanged():
    delta = {"a": torch.tensor([0.3, -0.4])}

    clipped, norm = clip_update(delta, max_norm=1.0)

    assert norm == pytest.approx(0.5)
    assert torch.equal(clipped["a"], delta["a"])


@pytest.mark.parametrize("max_norm", [0, -1.0, float("nan"), float("inf"), "1"])
def test_clip_update_rejects_bad_bound(max_norm):
    with pytest.raises(ValueError, match="max_norm"):
        clip_update({"a": torch.ones(2)}, max_norm=max_norm)


def test_clip_update_rejects_non_finite_update():
    with pytest.raises(ValueError, match="non-finite"):
        clip_update({"a": torch.tensor([1.0, float("nan")])}, max_norm=1.0)


def test_train_clips_inside_hospital_and_logs_locally():
    hospital = make_hospital()
    model = tiny_model()

    plain = hospital.train(model, local_epochs=1, lr=0.5, seed=3)
    clipped = hospital.train(
        model, local_epochs=1, lr=0.5, seed=3, max_update_norm=1e-3, max_weight=7
    )

    plain_norm = math.sqrt(
        sum(float((v.double() ** 2).sum()) for v in plain.delta.values())
    )
    clipped_norm = math.sqrt(
        sum(float((v.double() ** 2).sum()) for v in clipped.delta.values())
    )
    assert plain_norm > 1e-3
    assert clipped_norm == pytest.approx(1e-3, rel=1e-6)
    assert clipped.n_samples == 7
    assert plain.n_samples == hospital.n_samples == 20
    log = hospital.clipping_log
    assert len(log) == 1
    assert log[0]["clipped"] is True
    assert log[0]["norm"] == pytest.approx(plain_norm, rel=1e-6)
    assert not hasattr(clipped, "clipping_log")


def test_train_rejects_bad_max_weight():
    with pytest.raises(ValueError, match="max_weight"):
        make_hospital().train(tiny_model(), local_epochs=1, lr=0.1, max_weight=0)


def test_clip_update_rejects_integer_tensors():
    delta = {"weight": torch.full((3,), 10.0), "num_batches_tracked": torch.tensor(7)}

    with pytest.raises(ValueError, match="num_batches_tracked"):
        clip_update(delta, max_norm=1.0)


def test_clip_update_accepts_numpy_bound():
    clipped, norm = clip_update({"a": torch.tensor([3.0, 4.0])}, max_norm=np.float32(1))

    assert norm == pytest.approx(5.0)
    assert torch.allclose(clipped["a"], torch.tensor([0.6, 0.8]))


def test_train_checks_bound_before_training():
    calls = []

    def counting_step(model, dataset, **options):
        calls.append(options)
        return 0.0

    with pytest.raises(ValueError, match="max_update_norm"):
        make_hospital().train(
            tiny_model(),
            local_epochs=1,
            lr=0.1,
            local_step=counting_step,
            max_update_norm=True,
        )
    assert calls == []


def test_train_passes_on_leave_federation():
    hospital = make_hospital()

    def leaving_step(model, dataset, **options):
        raise LeaveFederation("budget spent")

    with pytest.raises(LeaveFederation, match="budget spent"):
        hospital.train(
            tiny_model(),
            local_epochs=1,
            lr=0.1,
            local_step=leaving_step,
            max_update_norm=1.0,
        )
    assert hospital.clipping_log == []
