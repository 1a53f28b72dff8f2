"""Tests for federated averaging, server momentum, the round loop and baselines."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from helpers.datasets import images_to_tensor
from helpers.federated import (
    History,
    ServerMomentum,
    cosine_lr,
    evaluate,
    fedavg,
    run_federated,
    train_local_only,
    train_pooled,
    validate_updates,
)
from helpers.hospital import Hospital, LeaveFederation, Update, sgd_local_step
from helpers.metrics import classification_metrics
from helpers.models import SkinLesionCNN, predict_proba

SIDE = 8
N_CLASSES = 3


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


def hand_state():
    return {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor(0.5)}


def hand_update(name, n_samples, w, b):
    delta = {"w": torch.tensor(w), "b": torch.tensor(b)}
    return Update(hospital=name, delta=delta, n_samples=n_samples, train_loss=1.0)


def separable_part(n, *, seed):
    """Images whose class c (0..2) lights up colour channel c, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, size=n).astype(np.int64)
    images = rng.integers(0, 60, size=(n, SIDE, SIDE, 3))
    images[np.arange(n), :, :, labels] += 180
    return images.astype(np.uint8), labels


def separable_hospitals(count=3, *, n_train=24):
    return [
        Hospital(
            f"h{i}",
            train=separable_part(n_train + 4 * i, seed=10 * i),
            val=separable_part(12, seed=10 * i + 1),
            test=separable_part(12, seed=10 * i + 2),
        )
        for i in range(count)
    ]


def tiny_model(seed=0):
    return SkinLesionCNN(width=4, groups=2, side=SIDE, seed=seed)


def unchanged_step(model, dataset, **options):
    """A local step that trains nothing, for tests of the loop itself."""
    return 0.0


def count_training_examples(model):
    """Count examples through the model in train mode (copies share the list)."""
    seen = []

    def hook(module, inputs, output):
        if module.training:
            seen.append(len(inputs[0]))

    model.register_forward_hook(hook)
    return seen


# fedavg.


def test_fedavg_weights_by_sample_count():
    updates = [
        hand_update("a", 1, [4.0, 0.0], 2.0),
        hand_update("b", 3, [8.0, 4.0], -2.0),
    ]

    new_state = fedavg(hand_state(), updates)

    # Mean delta: w (1 * 4 + 3 * 8) / 4 = 7 and (0 + 12) / 4 = 3; b (2 - 6) / 4 = -1.
    torch.testing.assert_close(new_state["w"], torch.tensor([8.0, 1.0]))
    torch.testing.assert_close(new_state["b"], torch.tensor(-0.5))
    assert new_state["w"].dtype == torch.float32


def test_fedavg_server_lr_scales_step():
    updates = [
        hand_update("a", 1, [4.0, 0.0], 2.0),
        hand_update("b", 3, [8.0, 4.0], -2.0),
    ]

    new_state = fedavg(hand_state(), updates, server_lr=0.5)

    torch.testing.assert_close(new_state["w"], torch.tensor([4.5, -0.5]))
    torch.testing.assert_close(new_state["b"], torch.tensor(0.0))


def test_fedavg_identical_updates_equal_one():
    single = hand_update("a", 5, [0.3, -0.7], 0.1)
    same = [hand_update(name, n, [0.3, -0.7], 0.1) for name, n in [("a", 5), ("b", 2)]]

    alone = fedavg(hand_state(), [single])
    together = fedavg(hand_state(), same)

    for key in alone:
        torch.testing.assert_close(together[key], alone[key])
    torch.testing.assert_close(alone["w"], torch.tensor([1.3, -2.7]))


def test_fedavg_leaves_global_state_unchanged():
    state = hand_state()

    fedavg(state, [hand_update("a", 1, [1.0, 1.0], 1.0)])

    torch.testing.assert_close(state["w"], torch.tensor([1.0, -2.0]))


def test_fedavg_rejects_bad_input():
    state = hand_state()
    missing = Update("c", {"w": torch.zeros(2)}, 1, 0.0)

    with pytest.raises(ValueError, match="No updates"):
        fedavg(state, [])
    with pytest.raises(ValueError, match="n_samples 0"):
        fedavg(state, [hand_update("a", 0, [1.0, 1.0], 1.0)])
    with pytest.raises(ValueError, match="server_lr must be positive"):
        fedavg(state, [hand_update("a", 1, [1.0, 1.0], 1.0)], server_lr=0.0)
    with pytest.raises(ValueError, match="hospital 'c'.*missing \\['b'\\]"):
        fedavg(state, [missing])


# validate_updates.


def test_validate_excludes_bad_updates(caplog):
    good = hand_update("good", 2, [1.0, 1.0], 1.0)
    also_good = hand_update("zero", 0, [0.0, 0.0], 0.0)
    bad = [
        hand_update("nan", 2, [float("nan"), 1.0], 1.0),
        hand_update("inf", 2, [1.0, 1.0], float("inf")),
        Update("shape", {"w": torch.zeros(3), "b": torch.tensor(0.0)}, 2, 0.0),
        Update("missing", {"w": torch.zeros(2)}, 2, 0.0),
        Update("extra", hand_state() | {"c": torch.zeros(1)}, 2, 0.0),
        hand_update("negative", -1, [1.0, 1.0], 1.0),
    ]

    with caplog.at_level(logging.WARNING, logger="helpers.federated"):
        valid = validate_updates(hand_state(), [good, *bad, also_good], round=3)

    assert valid == [good, also_good]
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith("Round 3: excluded 6 of 8 updates")
    for update in bad:
        assert f"hospital {update.hospital!r}" in message
    assert "w holds NaN or infinite values" in message
    assert "w has shape (3,), expected (2,)" in message
    assert "missing ['b']" in message
    assert "unexpected ['c']" in message
    assert "n_samples must be >= 0" in message


def test_validate_all_valid_logs_nothing(caplog):
    updates = [hand_update("a", 1, [1.0, 1.0], 1.0)]

    with caplog.at_level(logging.WARNING, logger="helpers.federated"):
        valid = validate_updates(hand_state(), updates, round=1)

    assert valid == updates
    assert caplog.records == []


def test_validate_all_bad_raises():
    bad = [hand_update("nan", 2, [float("nan"), 1.0], 1.0)]

    with pytest.raises(ValueError, match="Round 7: no valid update.*'nan'"):
        validate_updates(hand_state(), bad, round=7)
    with pytest.raises(ValueError, match="Round 2: no valid update"):
        validate_updates(hand_state(), [], round=2)


def test_validate_zero_weights_raises():
    zero = [hand_update("a", 0, [1.0, 1.0], 1.0), hand_update("b", 0, [0.0, 1.0], 0.0)]

    with pytest.raises(ValueError, match="Round 4: every valid update has n_samples 0"):
        validate_updates(hand_state(), zero, round=4)


# ServerMomentum.


def test_server_momentum_matches_hand_computation():
    aggregate = ServerMomentum(momentum=0.5, server_lr=2.0)
    first = [hand_update("a", 1, [2.0, 0.0], 1.0), hand_update("b", 1, [0.0, 2.0], 1.0)]
    second = [
        hand_update("a", 3, [4.0, 0.0], 0.0),
        hand_update("b", 1, [0.0, 4.0], 0.0),
    ]

    after_one = aggregate(hand_state(), first)
    after_two = aggregate(after_one, second)

    # Round 1: d = v = (1, 1), b 1; w = (1, -2) + 2 * (1, 1) = (3, 0), b = 2.5.
    torch.testing.assert_close(after_one["w"], torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(after_one["b"], torch.tensor(2.5))
    # Round 2: d = (3, 1), b 0; v = 0.5 * (1, 1) + (3, 1) = (3.5, 1.5), b 0.5;
    # w = (3, 0) + 2 * v = (10, 3), b = 2.5 + 1 = 3.5.
    torch.testing.assert_close(after_two["w"], torch.tensor([10.0, 3.0]))
    torch.testing.assert_close(after_two["b"], torch.tensor(3.5))


def test_server_momentum_zero_equals_fedavg():
    aggregate = ServerMomentum(momentum=0.0)
    updates = [
        hand_update("a", 1, [4.0, 0.0], 2.0),
        hand_update("b", 3, [8.0, 4.0], 0.0),
    ]

    state = aggregate(hand_state(), updates)

    expected = fedavg(hand_state(), updates)
    for key in state:
        torch.testing.assert_close(state[key], expected[key])


def test_server_momentum_reset_forgets_velocity():
    aggregate = ServerMomentum(momentum=0.9)
    updates = [hand_update("a", 1, [1.0, 1.0], 1.0)]
    first = aggregate(hand_state(), updates)

    aggregate.reset()
    again = aggregate(hand_state(), updates)

    torch.testing.assert_close(again["w"], first["w"])
    assert aggregate.velocity is not None


def test_server_momentum_rejects_bad_input():
    aggregate = ServerMomentum()
    aggregate(hand_state(), [hand_update("a", 1, [1.0, 1.0], 1.0)])
    other_model = {"v": torch.zeros(2)}

    with pytest.raises(ValueError, match="keys changed"):
        aggregate(other_model, [Update("a", {"v": torch.ones(2)}, 1, 0.0)])
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\)"):
        ServerMomentum(momentum=1.0)
    with pytest.raises(ValueError, match="server_lr must be positive"):
        ServerMomentum(server_lr=-1.0)


# run_federated.


def test_run_federated_learns_separable_data(monkeypatch):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals()
    model = SkinLesionCNN(width=8, groups=2, side=SIDE, seed=0)
    before = model.head.weight.detach().clone()

    history = run_federated(model, hospitals, rounds=6, lr=0.05, batch_size=8)

    assert len(history) == 6
    assert [record["round"] for record in history] == [1, 2, 3, 4, 5, 6]
    assert not torch.equal(model.head.weight, before)
    final = history[-1]
    assert final["hospitals"] == ("h0", "h1", "h2")
    assert final["excluded"] == ()
    assert final["val_n"] == 36
    assert final["val_confusion_matrix"].sum() == 36
    # Chance is 1/3 for three classes.
    assert final["val_balanced_accuracy"] > 0.8
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_run_federated_repeatable_from_seed(monkeypatch):
    monkeypatch.setenv("CI", "1")
    models = [tiny_model(), tiny_model(), tiny_model()]
    for model, seed in zip(models, (1, 1, 2), strict=True):
        run_federated(model, separable_hospitals(2), rounds=2, lr=0.1, seed=seed)

    assert torch.equal(models[0].head.weight, models[1].head.weight)
    assert not torch.equal(models[0].head.weight, models[2].head.weight)


def test_run_federated_validation_sums_hospitals(monkeypatch):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals(2)
    model = tiny_model()

    history = run_federated(model, hospitals, rounds=1, lr=0.1)

    summed = sum(h.evaluate(model)["confusion_matrix"] for h in hospitals)
    np.testing.assert_array_equal(history[0]["val_confusion_matrix"], summed)
    recall = np.diag(summed)[:N_CLASSES] / summed.sum(axis=1)[:N_CLASSES]
    assert history[0]["val_balanced_accuracy"] == pytest.approx(recall.mean())


@pytest.mark.parametrize(
    ("n_hospitals", "fraction", "expected"),
    [(5, 0.4, 2), (3, 0.5, 2), (4, 0.1, 1), (4, 1.0, 4), (10, 0.3, 3)],
)
def test_run_federated_fraction_sampling(monkeypatch, n_hospitals, fraction, expected):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals(n_hospitals, n_train=2)

    history = run_federated(
        tiny_model(),
        hospitals,
        rounds=8,
        lr=0.1,
        fraction=fraction,
        local_step=unchanged_step,
    )
    again = run_federated(
        tiny_model(),
        hospitals,
        rounds=8,
        lr=0.1,
        fraction=fraction,
        local_step=unchanged_step,
    )

    sampled = [record["hospitals"] for record in history]
    assert all(len(names) == expected for names in sampled)
    assert all(len(set(names)) == expected for names in sampled)
    assert sampled == [record["hospitals"] for record in again]
    if expected < n_hospitals:
        assert len(set(sampled)) > 1


def test_run_federated_excludes_diverged_hospital(monkeypatch, caplog):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals(3)
    nan_size = hospitals[1].n_samples

    def diverging_step(model, dataset, **options):
        if len(dataset) == nan_size:
            with torch.no_grad():
                model.head.weight.fill_(float("nan"))
        return 1.0

    with caplog.at_level(logging.WARNING, logger="helpers.federated"):
        history = run_federated(
            tiny_model(), hospitals, rounds=2, lr=0.1, local_step=diverging_step
        )

    assert [record["excluded"] for record in history] == [("h1",), ("h1",)]
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("Round 1:") and "'h1'" in m for m in messages)
    assert any(m.startswith("Round 2:") and "'h1'" in m for m in messages)


def test_run_federated_all_bad_keeps_model(monkeypatch):
    monkeypatch.setenv("CI", "1")
    model = tiny_model()
    before = model.head.weight.detach().clone()

    def nan_step(model, dataset, **options):
        with torch.no_grad():
            model.head.bias.fill_(float("inf"))
        return 1.0

    with pytest.raises(ValueError, match="Round 1: no valid update"):
        run_federated(
            model, separable_hospitals(2), rounds=1, lr=0.1, local_step=nan_step
        )
    assert torch.equal(model.head.weight, before)
    assert torch.all(torch.isfinite(model.head.bias))


def test_run_federated_rejects_nan_aggregate(monkeypatch):
    monkeypatch.setenv("CI", "1")
    model = tiny_model()

    def nan_aggregate(global_state, updates):
        return {
            key: torch.full_like(v, float("nan")) for key, v in global_state.items()
        }

    with pytest.raises(ValueError, match="Round 1: aggregate returned NaN"):
        run_federated(
            model, separable_hospitals(2), rounds=1, lr=0.1, aggregate=nan_aggregate
        )
    assert torch.all(torch.isfinite(model.head.weight))


def test_run_federated_plugs_in_steps(monkeypatch):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals(2)
    step_calls = []
    aggregate_calls = []

    def recording_step(model, dataset, **options):
        step_calls.append(options)
        return sgd_local_step(model, dataset, **options)

    def recording_aggregate(global_state, updates):
        aggregate_calls.append([update.hospital for update in updates])
        return ServerMomentum(momentum=0.5)(global_state, updates)

    run_federated(
        tiny_model(),
        hospitals,
        rounds=2,
        local_epochs=2,
        lr=0.05,
        batch_size=4,
        local_step=recording_step,
        aggregate=recording_aggregate,
        step_options={"proximal_mu": 0.1, "class_weights": "balanced"},
    )

    assert len(step_calls) == 4
    assert all(call["proximal_mu"] == 0.1 for call in step_calls)
    assert all(call["class_weights"] == "balanced" for call in step_calls)
    assert all(call["local_epochs"] == 2 for call in step_calls)
    assert all(call["batch_size"] == 4 for call in step_calls)
    assert aggregate_calls == [["h0", "h1"], ["h0", "h1"]]


def test_run_federated_clips_and_caps_in_hospitals(monkeypatch):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals(2)
    received = []

    def recording_aggregate(global_state, updates):
        received.extend(updates)
        return fedavg(global_state, updates)

    run_federated(
        tiny_model(),
        hospitals,
        rounds=2,
        lr=0.5,
        batch_size=4,
        aggregate=recording_aggregate,
        max_update_norm=1e-3,
        max_weight=5,
    )

    norms = [
        float(torch.cat([value.flatten() for value in update.delta.values()]).norm())
        for update in received
    ]
    assert len(received) == 4
    assert max(norms) <= 1e-3 * (1 + 1e-5)
    assert [update.n_samples for update in received] == [5, 5, 5, 5]
    assert all(len(hospital.clipping_log) == 2 for hospital in hospitals)
    assert all(entry["clipped"] for entry in hospitals[0].clipping_log)


def test_run_federated_logs_once_per_round(monkeypatch, caplog):
    monkeypatch.setenv("CI", "1")

    with caplog.at_level(logging.INFO, logger="helpers.federated"):
        run_federated(
            tiny_model(),
            separable_hospitals(2),
            rounds=3,
            lr=0.1,
            local_step=unchanged_step,
        )

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3
    assert messages[0].startswith("Round 1/3: 2 hospitals, 0 excluded, train loss")


def test_run_federated_progress_bar(monkeypatch, capsys):
    options = {"rounds": 2, "lr": 0.1, "local_step": unchanged_step}
    monkeypatch.delenv("CI", raising=False)
    run_federated(tiny_model(), separable_hospitals(1), **options)
    with_bar = capsys.readouterr().err

    run_federated(tiny_model(), separable_hospitals(1), progress=False, **options)
    hidden = capsys.readouterr().err
    monkeypatch.setenv("CI", "true")
    run_federated(tiny_model(), separable_hospitals(1), **options)
    in_ci = capsys.readouterr().err

    assert "rounds: 100%" in with_bar
    assert hidden == ""
    assert in_ci == ""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rounds": 0}, "rounds must be an int >= 1"),
        ({"fraction": 0.0}, r"fraction must lie in \(0, 1\]"),
        ({"fraction": 1.5}, r"fraction must lie in \(0, 1\]"),
        ({"local_epochs": 0}, "local_epochs must be an int >= 1"),
    ],
)
def test_run_federated_rejects_bad_settings(options, message):
    settings = {"rounds": 1, "lr": 0.1} | options

    with pytest.raises(ValueError, match=message):
        run_federated(tiny_model(), separable_hospitals(1), **settings)


def test_run_federated_rejects_bad_federation():
    twins = separable_hospitals(1) * 2

    with pytest.raises(ValueError, match="names must be unique"):
        run_federated(tiny_model(), twins, rounds=1, lr=0.1)
    with pytest.raises(ValueError, match="hospitals is empty"):
        run_federated(tiny_model(), [], rounds=1, lr=0.1)


# History.


def test_history_to_frame():
    history = History()
    recall = {"akiec": 0.5, "bcc": None}
    for round_number in (1, 2):
        history.append(
            {
                "round": round_number,
                "hospitals": ("a", "b"),
                "excluded": ("b",) if round_number == 2 else (),
                "train_loss": 1.0 / round_number,
                "val_balanced_accuracy": 0.5,
                "val_accuracy": 0.6,
                "val_melanoma_sensitivity": None,
                "val_per_class_recall": recall,
                "val_confusion_matrix": np.eye(2, dtype=np.int64),
                "val_n": 2,
            }
        )

    frame = history.to_frame()

    assert list(frame["round"]) == [1, 2]
    assert list(frame["hospitals"]) == ["a, b", "a, b"]
    assert list(frame["excluded"]) == ["", "b"]
    assert list(frame["train_loss"]) == [1.0, 0.5]
    assert list(frame["val_recall_akiec"]) == [0.5, 0.5]
    assert frame["val_recall_bcc"].isna().all()
    assert "val_confusion_matrix" not in frame.columns
    assert len(history) == 2


# Baselines.


def test_train_pooled_budget():
    images, labels = separable_part(10, seed=0)
    model = tiny_model()
    seen = count_training_examples(model)

    losses = train_pooled(model, images, labels, epochs=3, lr=0.1, batch_size=4)

    assert len(losses) == 3
    assert seen == [4, 4, 2] * 3
    assert all(np.isfinite(losses))


def test_train_pooled_matches_federated_budget(monkeypatch):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals(3)
    parts = [separable_part(24 + 4 * i, seed=10 * i) for i in range(3)]
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    federated_model, pooled_model = tiny_model(), tiny_model()
    federated_seen = count_training_examples(federated_model)
    pooled_seen = count_training_examples(pooled_model)

    run_federated(federated_model, hospitals, rounds=2, local_epochs=2, lr=0.1)
    train_pooled(pooled_model, images, labels, epochs=4, lr=0.1)

    assert sum(federated_seen) == sum(pooled_seen) == 4 * len(labels)


def test_train_pooled_learns_and_repeats():
    images, labels = separable_part(60, seed=3)
    first, second = tiny_model(), tiny_model()

    losses = train_pooled(first, images, labels, epochs=4, lr=0.2, batch_size=8)
    train_pooled(
        second, images_to_tensor(images), labels, epochs=4, lr=0.2, batch_size=8
    )

    assert losses[-1] < losses[0]
    assert torch.equal(first.head.weight, second.head.weight)


def test_train_pooled_rejects_bad_input():
    images, labels = separable_part(6, seed=0)

    with pytest.raises(ValueError, match="one label per image"):
        train_pooled(tiny_model(), images, labels[:5], epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train_pooled(tiny_model(), images, labels, epochs=0, lr=0.1)


def test_train_local_only_budget_and_copy():
    hospital = separable_hospitals(1)[0]
    model = tiny_model()
    before = model.head.weight.detach().clone()
    seen = count_training_examples(model)

    trained = train_local_only(model, hospital, epochs=3, lr=0.1, batch_size=8)

    assert trained is not model
    assert torch.equal(model.head.weight, before)
    assert not torch.equal(trained.head.weight, before)
    assert sum(seen) == 3 * hospital.n_samples
    assert seen == [8, 8, 8] * 3


def test_train_local_only_rejects_bad_input():
    hospital = separable_hospitals(1)[0]

    def nan_step(model, dataset, **options):
        with torch.no_grad():
            model.head.bias.fill_(float("nan"))
        return 1.0

    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train_local_only(tiny_model(), hospital, epochs=0, lr=0.1)
    with pytest.raises(ValueError, match="'h0' diverged in epoch 1"):
        train_local_only(tiny_model(), hospital, epochs=1, lr=0.1, local_step=nan_step)


# evaluate.


def test_evaluate_matches_classification_metrics():
    images, labels = separable_part(15, seed=4)
    model = tiny_model()

    from_array = evaluate(model, images, labels)
    from_tensor = evaluate(model, images_to_tensor(images), torch.as_tensor(labels))

    expected = classification_metrics(
        labels, predict_proba(model, images_to_tensor(images))
    )
    assert from_array["n"] == 15
    assert from_array["balanced_accuracy"] == pytest.approx(
        expected["balanced_accuracy"]
    )
    np.testing.assert_array_equal(
        from_tensor["confusion_matrix"], expected["confusion_matrix"]
    )


def test_evaluate_rejects_mismatched_labels():
    images, labels = separable_part(5, seed=0)

    with pytest.raises(ValueError, match="one label per image"):
        evaluate(tiny_model(), images, labels[:4])


# Learning-rate schedules.


def test_cosine_lr_values():
    schedule = cosine_lr(0.1, 4)

    # Half a cosine over 4 steps: 1, (1 + cos(pi/4))/2, 1/2, (1 + cos(3pi/4))/2.
    expected = [0.1, 0.1 * (1 + 2**-0.5) / 2, 0.05, 0.1 * (1 - 2**-0.5) / 2]
    assert [schedule(t) for t in range(1, 5)] == pytest.approx(expected)


def test_cosine_lr_rejects_bad_input():
    with pytest.raises(ValueError, match="initial"):
        cosine_lr(0.0, 4)
    with pytest.raises(ValueError, match="total"):
        cosine_lr(0.1, 0)
    with pytest.raises(ValueError, match="outside"):
        cosine_lr(0.1, 4)(5)


def recording_lr_step(seen_lrs):
    def step(model, dataset, **options):
        seen_lrs.append(options["lr"])
        return 0.0

    return step


def test_run_federated_follows_schedule(monkeypatch):
    monkeypatch.setenv("CI", "1")
    seen_lrs = []

    run_federated(
        tiny_model(),
        separable_hospitals(2),
        rounds=3,
        lr=lambda round_number: 0.1 * round_number,
        local_step=recording_lr_step(seen_lrs),
    )

    # Two hospitals per round, each trained at that round's rate.
    assert seen_lrs == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])


def test_baselines_follow_schedule():
    images, labels = separable_part(8, seed=0)
    pooled_lrs, local_lrs = [], []

    train_pooled(
        tiny_model(),
        images,
        labels,
        epochs=3,
        lr=cosine_lr(0.1, 3),
        local_step=recording_lr_step(pooled_lrs),
    )
    train_local_only(
        tiny_model(),
        separable_hospitals(1)[0],
        epochs=2,
        lr=lambda epoch: 0.01 * epoch,
        local_step=recording_lr_step(local_lrs),
    )

    assert pooled_lrs == pytest.approx([0.1, 0.075, 0.025])
    assert local_lrs == pytest.approx([0.01, 0.02])


def test_schedule_rejects_non_positive_rate(monkeypatch):
    monkeypatch.setenv("CI", "1")
    with pytest.raises(ValueError, match="learning rate at round or epoch 2"):
        run_federated(
            tiny_model(),
            separable_hospitals(2),
            rounds=2,
            lr=lambda round_number: 0.1 if round_number == 1 else 0.0,
            local_step=unchanged_step,
        )


# Per-hospital steps, leaving the federation and Poisson sampling.


def test_run_federated_uses_per_hospital_steps(monkeypatch):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals(3)
    calls = []

    def named_step(name):
        def step(model, dataset, **options):
            calls.append((name, len(dataset)))
            return 0.0

        return step

    run_federated(
        tiny_model(),
        hospitals,
        rounds=2,
        lr=0.1,
        local_step=unchanged_step,
        local_steps={"h0": named_step("h0"), "h2": named_step("h2")},
    )

    assert calls == [("h0", 24), ("h2", 32), ("h0", 24), ("h2", 32)]
    with pytest.raises(ValueError, match=r"names hospitals \['nowhere'\]"):
        run_federated(
            tiny_model(),
            hospitals,
            rounds=1,
            lr=0.1,
            local_steps={"nowhere": unchanged_step},
        )


def test_run_federated_hospital_leaves(monkeypatch, caplog):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals(3)
    calls = []

    def leaves_after_one_round(model, dataset, **options):
        calls.append(len(dataset))
        if len(calls) > 1:
            raise LeaveFederation("budget spent")
        return 0.0

    with caplog.at_level(logging.WARNING, logger="helpers.federated"):
        history = run_federated(
            tiny_model(),
            hospitals,
            rounds=3,
            lr=0.1,
            local_step=unchanged_step,
            local_steps={"h1": leaves_after_one_round},
        )

    assert [record["hospitals"] for record in history] == [
        ("h0", "h1", "h2"),
        ("h0", "h2"),
        ("h0", "h2"),
    ]
    assert [record["left"] for record in history] == [(), ("h1",), ()]
    assert calls == [28, 28]
    assert list(history.to_frame()["left"]) == ["", "h1", ""]
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "Round 2: hospital 'h1' left the federation and sent no update: budget spent"
    ]


def test_run_federated_stops_when_all_left(monkeypatch, caplog):
    monkeypatch.setenv("CI", "1")
    model = tiny_model()

    def always_leaves(model, dataset, **options):
        raise LeaveFederation("no budget")

    before = {key: value.clone() for key, value in model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="helpers.federated"):
        history = run_federated(
            model, separable_hospitals(2), rounds=4, lr=0.1, local_step=always_leaves
        )

    assert len(history) == 1
    assert history[0]["left"] == ("h0", "h1")
    assert history[0]["train_loss"] is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "no hospital is left in the federation, so the run stops after 1" in (
        caplog.text
    )


def test_run_federated_poisson_sampling(monkeypatch):
    monkeypatch.setenv("CI", "1")
    hospitals = separable_hospitals(4)
    received = []

    def recording_aggregate(global_state, updates):
        received.append(tuple(update.hospital for update in updates))
        return global_state

    def run(seed):
        return run_federated(
            tiny_model(),
            hospitals,
            rounds=12,
            lr=0.1,
            fraction=0.3,
            seed=seed,
            sampling="poisson",
            local_step=unchanged_step,
            aggregate=recording_aggregate,
        )

    history = run(0)
    again = run(0)

    sampled = [record["hospitals"] for record in history]
    assert sampled == [record["hospitals"] for record in again]
    assert received[:12] == sampled
    counts = [len(names) for names in sampled]
    assert 0 in counts
    assert len(set(counts)) >= 3
    assert 0.1 < sum(counts) / (12 * 4) < 0.5
    empty = counts.index(0)
    assert history[empty]["train_loss"] is None
    with pytest.raises(ValueError, match="sampling must be one of"):
        run_federated(tiny_model(), hospitals, rounds=1, lr=0.1, sampling="stratified")


def test_run_federated_poisson_empty_round_reaches_fedavg(monkeypatch):
    monkeypatch.setenv("CI", "1")
    with pytest.raises(ValueError, match="No updates to aggregate"):
        run_federated(
            tiny_model(),
            separable_hospitals(1),
            rounds=30,
            lr=0.1,
            fraction=0.05,
            sampling="poisson",
            local_step=unchanged_step,
        )
