"""Tests for federated averaging with secure aggregation against plain FedAvg."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from helpers import crypto
from helpers.federated import ServerMomentum, fedavg, run_federated
from helpers.hospital import Hospital, Update
from helpers.models import SkinLesionCNN
from helpers.secure_aggregation import (
    MASKED_INPUT,
    PEER_SUM,
    UNMASKING,
    ProtocolError,
)
from helpers.secure_fedavg import (
    SecureAggregator,
    encode_update,
    flatten_delta,
    plain_weighted_sum,
    unflatten_delta,
)

SIDE = 8
N_CLASSES = 3
MAX_UPDATE_NORM = 0.5
MAX_WEIGHT = 30
# Final weights of a secure and a plain run from the same seed may differ by
# this much: each round differs by at most n quanta / 2 in the weighted sum,
# and training carries such differences on.
PARAMETER_TOLERANCE = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def quiet_test_mode():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure aggregation runs in its")
        yield


def separable_part(n, *, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, size=n).astype(np.int64)
    images = rng.integers(0, 60, size=(n, SIDE, SIDE, 3))
    images[np.arange(n), :, :, labels] += 180
    return images.astype(np.uint8), labels


def hospitals(count=4):
    return [
        Hospital(
            f"h{i}",
            train=separable_part(20 + 6 * i, seed=10 * i),
            val=separable_part(10, seed=10 * i + 1),
            test=separable_part(4, seed=10 * i + 2),
        )
        for i in range(count)
    ]


def tiny_model():
    return SkinLesionCNN(width=4, groups=2, side=SIDE, seed=0)


def hand_state():
    return {"w": torch.tensor([1.0, -2.0, 0.5]), "b": torch.tensor(0.25)}


def hand_update(name, n_samples, w, b):
    delta = {"w": torch.tensor(w), "b": torch.tensor(b)}
    return Update(hospital=name, delta=delta, n_samples=n_samples, train_loss=1.0)


def hand_updates():
    return [
        hand_update("a", 10, [0.1, -0.2, 0.0], 0.05),
        hand_update("b", 30, [-0.3, 0.1, 0.2], -0.1),
        hand_update("c", 20, [0.0, 0.4, -0.1], 0.0),
        hand_update("d", 5, [0.2, 0.2, 0.2], 0.2),
    ]


def max_gap(first, second):
    return max(float((first[key] - second[key]).abs().max()) for key in first)


def test_secure_step_equals_fedavg():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=30, seed=0)
    state, updates = hand_state(), hand_updates()

    new_state = secure(state, updates)

    assert max_gap(new_state, fedavg(state, updates)) < 1e-6
    report = secure.rounds[0]
    plain_sum, plain_weight = plain_weighted_sum(state, updates)
    assert report.total_weight == plain_weight == 65
    assert (
        np.max(np.abs(report.weighted_sum - plain_sum)) <= 4 * report.encoding.quantum
    )
    assert report.included == ["a", "b", "c", "d"]
    assert report.threshold == 3
    assert report.bytes_received > 0
    assert report.bytes_sent > 0


def test_server_momentum_equals_fedavgm():
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, server_momentum=0.5, seed=0
    )
    plain = ServerMomentum(momentum=0.5)
    state = plain_state = hand_state()
    updates = hand_updates()

    for _ in range(3):
        state = secure(state, updates)
        plain_state = plain(plain_state, updates)

    assert max_gap(state, plain_state) < 1e-6
    # The same mean three times: the velocity is (1 + 0.5 + 0.25) times it.
    mean = secure.rounds[0].weighted_sum / secure.rounds[0].total_weight
    assert np.allclose(secure.velocity, 1.75 * mean)
    assert max_gap(state, hand_state()) > 0.01


def test_server_momentum_rejects_another_model():
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, server_momentum=0.9, seed=0
    )
    secure(hand_state(), hand_updates())
    other = {"w": torch.zeros(2)}
    updates = [
        Update(
            hospital=name,
            delta={"w": torch.full((2,), 0.1)},
            n_samples=3,
            train_loss=1.0,
        )
        for name in "ab"
    ]

    with pytest.raises(ValueError, match="velocity"):
        secure(other, updates)


def test_server_momentum_rejects_model_of_same_size():
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, server_momentum=0.5, seed=0
    )
    first = {"w": torch.zeros(6), "b": torch.zeros(3)}
    second = {"x": torch.zeros(3, 3)}

    def updates_for(state):
        return [
            Update(
                hospital=name,
                delta={k: torch.full_like(v, 0.1) for k, v in state.items()},
                n_samples=3,
                train_loss=1.0,
            )
            for name in "ab"
        ]

    secure(first, updates_for(first))

    with pytest.raises(ValueError, match="keys or shapes"):
        secure(second, updates_for(second))
    assert len(secure.rounds) == 1


@pytest.mark.parametrize("momentum", [1.0, 1.5, -0.1])
def test_server_momentum_outside_range_raises(momentum):
    with pytest.raises(ValueError, match="server_momentum"):
        SecureAggregator(max_update_norm=1.0, max_weight=30, server_momentum=momentum)


def test_additive_protocol_equals_fedavg():
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, seed=14, protocol="additive"
    )
    state, updates = hand_state(), hand_updates()

    new_state = secure(state, updates)

    assert max_gap(new_state, fedavg(state, updates)) < 1e-6
    assert secure.rounds[0].total_weight == 65
    assert secure.rounds[0].threshold == 4
    messages = secure.channel.messages
    assert [m.step for m in messages] == [PEER_SUM] * 4
    for message in messages:
        update = next(u for u in updates if u.hospital == message.sender)
        own = encode_update(
            update,
            state,
            encoding=secure.rounds[0].encoding,
            max_update_norm=1.0,
            max_weight=30,
        )
        assert not np.any(message.payload == own)


def test_additive_protocol_rejects_dropouts():
    with pytest.raises(ValueError, match="tolerates no dropout"):
        SecureAggregator(
            max_update_norm=1.0,
            max_weight=30,
            protocol="additive",
            dropouts={1: {"a": MASKED_INPUT}},
        )
    with pytest.raises(ValueError, match="protocol must be one of"):
        SecureAggregator(max_update_norm=1.0, max_weight=30, protocol="shamir")


def test_server_record_holds_no_update():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=30, seed=1)
    state, updates = hand_state(), hand_updates()

    secure(state, updates)

    masked = secure.channel.received(step=MASKED_INPUT)
    assert len(masked) == 4
    encoding = secure.rounds[0].encoding
    for message in masked:
        update = next(u for u in updates if u.hospital == message.sender)
        weighted = update.n_samples * flatten_delta(update, state)
        own = encode_update(
            update, state, encoding=encoding, max_update_norm=1.0, max_weight=30
        )
        assert not np.any(message.payload == own)
        assert not np.allclose(encoding.decode(message.payload[:-1]), weighted)
        assert int(message.payload[-1]) != update.n_samples


def test_sample_counts_summed_securely():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=30, seed=2)
    updates = hand_updates()

    secure(hand_state(), updates)

    # Only the total of the weights reaches the server, never one of them.
    assert secure.rounds[0].total_weight == sum(u.n_samples for u in updates)
    for message in secure.channel.messages:
        if message.step != MASKED_INPUT:
            continue
        assert int(message.payload[-1]) not in {u.n_samples for u in updates}


def test_dropout_before_masking_averages_the_rest():
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, seed=3, dropouts={1: {"b": MASKED_INPUT}}
    )
    state, updates = hand_state(), hand_updates()

    new_state = secure(state, updates)

    rest = [u for u in updates if u.hospital != "b"]
    assert max_gap(new_state, fedavg(state, rest)) < 1e-6
    assert secure.rounds[0].dropped_before_masking == ["b"]
    assert secure.rounds[0].total_weight == 35


def test_dropout_after_masking_keeps_update():
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, seed=4, dropouts={1: {"b": UNMASKING}}
    )
    state, updates = hand_state(), hand_updates()

    new_state = secure(state, updates)

    assert max_gap(new_state, fedavg(state, updates)) < 1e-6
    assert secure.rounds[0].dropped_after_masking == ["b"]


def test_too_many_dropouts_raise():
    dropouts = {1: {"a": MASKED_INPUT, "b": MASKED_INPUT}}
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, seed=5, dropouts=dropouts
    )

    with pytest.raises(ProtocolError, match="fewer than the threshold 3"):
        secure(hand_state(), hand_updates())


def test_keep_rounds_bounds_the_record():
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, seed=13, keep_rounds=2
    )
    state = hand_state()

    for _ in range(3):
        state = secure(state, hand_updates())

    sessions = {message.session for message in secure.channel.messages}
    assert sessions == {"round 2", "round 3"}
    assert {entry[0] for entry in secure.channel.sent} == {"round 2", "round 3"}
    assert len(secure.rounds) == 3
    with pytest.raises(ValueError, match="keep_rounds"):
        SecureAggregator(max_update_norm=1.0, max_weight=30, keep_rounds=0)


def test_fewer_than_two_updates_raise():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=30, seed=12)

    with pytest.raises(ValueError, match="at least 2 updates, got 1"):
        secure(hand_state(), hand_updates()[:1])
    with pytest.raises(ValueError, match="at least 2 updates, got 0"):
        secure(hand_state(), [])


def test_unclipped_update_raises():
    secure = SecureAggregator(max_update_norm=0.1, max_weight=30, seed=6)

    with pytest.raises(ValueError, match="'a'.*exceeds the declared bound 0.1"):
        secure(hand_state(), hand_updates())


def test_weight_above_cap_raises():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=20, seed=7)

    with pytest.raises(ValueError, match="'b'.*weight 30 exceeds the declared"):
        secure(hand_state(), hand_updates())


def test_mismatched_update_shape_raises():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=30, seed=8)
    updates = hand_updates()
    updates[2] = hand_update("c", 20, [0.1, 0.1], 0.0)

    with pytest.raises(ValueError, match="'c': w has shape"):
        secure(hand_state(), updates)
    wrong_keys = Update("e", {"w": torch.zeros(3)}, 1, 0.0)
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        flatten_delta(wrong_keys, hand_state())


def test_unflatten_inverts_flatten():
    state = hand_state()
    update = hand_updates()[1]

    flat = flatten_delta(update, state)
    tensors = unflatten_delta(flat, state)

    assert flat.tolist() == pytest.approx([-0.3, 0.1, 0.2, -0.1])
    assert list(tensors) == ["w", "b"]
    assert tensors["b"].shape == ()
    assert tensors["w"].dtype == torch.float32
    assert torch.equal(tensors["w"], update.delta["w"])
    with pytest.raises(ValueError, match="has 3 values, but the state has 4"):
        unflatten_delta(flat[:3], state)


def test_hospital_noise_hook_added_before_masking():
    calls = []

    def constant_noise(name, delta):
        calls.append(name)
        return np.full_like(delta, 0.01)

    secure = SecureAggregator(
        max_update_norm=1.0,
        max_weight=30,
        seed=9,
        hospital_noise=constant_noise,
        noise_bound=0.05,
    )
    state, updates = hand_state(), hand_updates()

    new_state = secure(state, updates)

    assert calls == ["a", "b", "c", "d"]
    expected = fedavg(state, updates)
    assert max_gap(new_state, {k: v + 0.01 for k, v in expected.items()}) < 1e-6


def test_noise_beyond_bound_raises():
    # 0.2 still fits the encoding's range, so only the bound check catches it.
    secure = SecureAggregator(
        max_update_norm=1.0,
        max_weight=30,
        seed=10,
        hospital_noise=lambda name, delta: np.full_like(delta, 0.2),
        noise_bound=0.1,
    )

    message = "'a': a noise value of magnitude 0.2 exceeds the declared noise_bound 0.1"
    with pytest.raises(ValueError, match=message):
        secure(hand_state(), hand_updates())


def test_noise_at_bound_accepted():
    def noise(name, delta):
        return np.where(np.arange(len(delta)) % 2 == 0, 0.1, -0.1)

    secure = SecureAggregator(
        max_update_norm=1.0,
        max_weight=30,
        seed=10,
        hospital_noise=noise,
        noise_bound=0.1,
    )
    state, updates = hand_state(), hand_updates()

    new_state = secure(state, updates)

    expected = fedavg(state, updates)
    shift = {"w": torch.tensor([0.1, -0.1, 0.1]), "b": torch.tensor(-0.1)}
    assert max_gap(new_state, {k: v + shift[k] for k, v in expected.items()}) < 1e-6


@pytest.mark.parametrize(
    "noise, message",
    [
        (lambda name, delta: delta * np.nan, "non-finite values"),
        (lambda name, delta: np.full_like(delta, np.inf), "non-finite values"),
        (lambda name, delta: np.zeros(len(delta), dtype=bool), "real numbers"),
        (lambda name, delta: torch.zeros(len(delta)), None),
    ],
    ids=["nan", "inf", "bool", "tensor"],
)
def test_noise_values_checked_in_hospital(noise, message):
    secure = SecureAggregator(
        max_update_norm=1.0,
        max_weight=30,
        seed=10,
        hospital_noise=noise,
        noise_bound=0.1,
    )
    state, updates = hand_state(), hand_updates()

    if message is None:
        assert max_gap(secure(state, updates), fedavg(state, updates)) < 1e-6
        return
    with pytest.raises(ValueError, match=f"Hospital 'a': hospital_noise .*{message}"):
        secure(state, updates)


def test_noise_of_wrong_shape_raises():
    secure = SecureAggregator(
        max_update_norm=1.0,
        max_weight=30,
        seed=11,
        hospital_noise=lambda name, delta: np.zeros(2),
    )

    with pytest.raises(ValueError, match="noise of shape \\(4,\\), got shape \\(2,\\)"):
        secure(hand_state(), hand_updates())


def test_ring_grows_with_hospitals():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=1000)

    bits = [secure.encoding_for(n).ring_bits for n in (3, 10, 50)]

    assert bits[0] < bits[1] < bits[2]
    assert bits[2] > 32
    assert secure.encoding_for(50).sum_max_abs >= 50 * 1000 * 1.0


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_update_norm": 0.0, "max_weight": 10}, "max_update_norm"),
        ({"max_update_norm": 1.0, "max_weight": 0}, "max_weight"),
        ({"max_update_norm": 1.0, "max_weight": 10, "noise_bound": 0.1}, "no hospital"),
        ({"max_update_norm": 1.0, "max_weight": 10, "server_lr": 0.0}, "server_lr"),
        ({"max_update_norm": 1e-9, "max_weight": 10}, "below the quantum"),
        ({"max_update_norm": 1e6, "max_weight": 10**6}, "bits"),
    ],
)
def test_invalid_settings_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        SecureAggregator(**settings)


def test_seeded_aggregator_warns(monkeypatch):
    monkeypatch.setattr(crypto, "_seeded_warning_shown", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SecureAggregator(max_update_norm=1.0, max_weight=10, seed=0)
    assert any("test mode" in str(w.message) for w in caught)


def test_federated_run_matches_plain_run():
    settings = dict(
        rounds=3,
        local_epochs=1,
        lr=0.1,
        batch_size=8,
        seed=0,
        max_update_norm=MAX_UPDATE_NORM,
        max_weight=MAX_WEIGHT,
        progress=False,
    )
    federation = hospitals()
    secure = SecureAggregator(
        max_update_norm=MAX_UPDATE_NORM, max_weight=MAX_WEIGHT, seed=0
    )
    gaps = []

    def checked(global_state, updates):
        new_state = secure(global_state, updates)
        plain_sum, plain_weight = plain_weighted_sum(global_state, updates)
        report = secure.rounds[-1]
        assert report.total_weight == plain_weight
        gaps.append(float(np.max(np.abs(report.weighted_sum - plain_sum))))
        return new_state

    plain_model, secure_model = tiny_model(), tiny_model()
    plain_history = run_federated(plain_model, federation, **settings)
    secure_history = run_federated(
        secure_model, federation, aggregate=checked, **settings
    )

    quantum = secure.rounds[0].encoding.quantum
    assert len(gaps) == 3
    assert max(gaps) <= len(federation) * quantum
    assert max_gap(plain_model.state_dict(), secure_model.state_dict()) < (
        PARAMETER_TOLERANCE
    )
    assert max_gap(plain_model.state_dict(), tiny_model().state_dict()) > 1e-3
    for plain, masked in zip(plain_history, secure_history, strict=True):
        assert plain["val_balanced_accuracy"] == pytest.approx(
            masked["val_balanced_accuracy"], abs=1e-9
        )
    # The largest hospital's weight was capped, and some updates were clipped.
    assert [r.total_weight for r in secure.rounds] == [20 + 26 + 30 + 30] * 3
    clipped = [e["clipped"] for h in federation for e in h.clipping_log]
    assert len(clipped) == 2 * 3 * 4
    assert any(clipped)


def test_duplicate_hospital_names_rejected():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=30, seed=15)
    updates = hand_updates()
    updates[2] = hand_update("a", 20, [0.0, 0.4, -0.1], 0.0)

    with pytest.raises(ValueError, match="hospitals \\['a'\\] sent more than one"):
        secure(hand_state(), updates)
    assert secure.rounds == []


@pytest.mark.parametrize("n_samples", [2.5, 10.0, True, "10", None])
def test_weight_of_wrong_type_rejected(n_samples):
    secure = SecureAggregator(max_update_norm=1.0, max_weight=30, seed=16)
    updates = hand_updates()
    updates[1] = hand_update("b", n_samples, [-0.3, 0.1, 0.2], -0.1)

    with pytest.raises(TypeError, match="Hospital 'b': n_samples must be an int"):
        secure(hand_state(), updates)


def test_numpy_integer_weight_accepted():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=30, seed=17)
    state, updates = hand_state(), hand_updates()
    numpy_updates = [
        Update(u.hospital, u.delta, np.int64(u.n_samples), u.train_loss)
        for u in updates
    ]

    new_state = secure(state, numpy_updates)

    assert secure.rounds[0].total_weight == 65
    assert max_gap(new_state, fedavg(state, updates)) < 1e-6


def test_negative_weight_message():
    secure = SecureAggregator(max_update_norm=1.0, max_weight=30, seed=18)
    updates = hand_updates()
    updates[0] = hand_update("a", -3, [0.1, -0.2, 0.0], 0.05)

    with pytest.raises(ValueError) as caught:
        secure(hand_state(), updates)

    assert "Hospital 'a': the weight n_samples must be >= 0, got -3" in str(
        caught.value
    )
    assert "exceeds" not in str(caught.value)


@pytest.mark.parametrize(
    "settings, error, message",
    [
        ({"server_lr": float("inf")}, ValueError, "server_lr must be a finite"),
        ({"server_lr": float("nan")}, ValueError, "server_lr must be a finite"),
        (
            {"server_lr": "1"},
            TypeError,
            "server_lr must be a real number .*got '1' of type str",
        ),
        ({"server_lr": True}, TypeError, "server_lr must be a real number"),
        ({"noise_bound": None}, TypeError, "noise_bound must be a real number"),
        ({"noise_bound": -0.1}, ValueError, "noise_bound must be a finite number >= 0"),
        (
            {"precision_bits": "24"},
            TypeError,
            "precision_bits must be an int, got '24'",
        ),
        ({"precision_bits": 24.0}, TypeError, "precision_bits must be an int"),
        ({"max_update_norm": True}, TypeError, "max_update_norm must be a real"),
        ({"max_weight": True}, TypeError, "max_weight must be an int"),
        ({"max_weight": 30.0}, TypeError, "max_weight must be an int"),
        ({"threshold": True}, TypeError, "threshold must be an int"),
        ({"threshold": 1}, ValueError, "threshold must be >= 2"),
        ({"keep_rounds": True}, TypeError, "keep_rounds must be an int"),
        ({"dropouts": {"1": {"a": MASKED_INPUT}}}, TypeError, "round number must be"),
        ({"dropouts": {1: {"a": "later"}}}, ValueError, "dropouts\\[1\\] must map"),
    ],
)
def test_setting_types_and_values_checked(settings, error, message):
    defaults = {"max_update_norm": 1.0, "max_weight": 30}

    with pytest.raises(error, match=message):
        SecureAggregator(**{**defaults, **settings})


def test_numpy_settings_accepted():
    secure = SecureAggregator(
        max_update_norm=np.float32(1.0),
        max_weight=np.int64(30),
        precision_bits=np.int64(24),
        threshold=np.int64(3),
        keep_rounds=np.int64(2),
        server_lr=np.float64(0.5),
        noise_bound=np.int64(0),
        seed=0,
    )
    state, updates = hand_state(), hand_updates()

    new_state = secure(state, updates)

    assert secure.max_weight == 30
    assert type(secure.max_update_norm) is float
    assert secure.rounds[0].threshold == 3
    assert max_gap(new_state, fedavg(state, updates, server_lr=0.5)) < 1e-6


def test_round_numbers_count_calls_that_raised():
    # Round 1 loses too many hospitals. The next call is round 2, with a
    # fresh session and its own dropouts, not a replay of round 1.
    dropouts = {
        1: {"a": MASKED_INPUT, "b": MASKED_INPUT},
        2: {"c": MASKED_INPUT},
    }
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, seed=19, dropouts=dropouts
    )
    state, updates = hand_state(), hand_updates()

    with pytest.raises(ProtocolError, match="fewer than the threshold 3"):
        secure(state, updates)
    new_state = secure(state, updates)

    report = secure.rounds[0]
    assert len(secure.rounds) == 1
    assert report.round == 2
    assert report.dropped_before_masking == ["c"]
    rest = [u for u in updates if u.hospital != "c"]
    assert max_gap(new_state, fedavg(state, rest)) < 1e-6
    assert {m.session for m in secure.channel.messages} == {"round 1", "round 2"}


def test_keep_rounds_drops_sessions_of_failed_calls():
    dropouts = {1: {"a": MASKED_INPUT, "b": MASKED_INPUT}}
    secure = SecureAggregator(
        max_update_norm=1.0, max_weight=30, seed=20, dropouts=dropouts, keep_rounds=1
    )
    state = hand_state()

    with pytest.raises(ProtocolError):
        secure(state, hand_updates())
    assert "round 1" in {m.session for m in secure.channel.messages}
    for _ in range(2):
        state = secure(state, hand_updates())

    assert {m.session for m in secure.channel.messages} == {"round 3"}
    assert [r.round for r in secure.rounds] == [2, 3]
