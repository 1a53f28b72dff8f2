"""Tests for the pairwise-masking protocol: exact sums, dropouts, the server's view."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from helpers import crypto
from helpers.crypto import RandomSource
from helpers.fixed_point import FixedPoint
from helpers.secure_aggregation import (
    ADVERTISE_KEYS,
    KEY_SHARE,
    MASKED_INPUT,
    PEER_SUM,
    SEED_SHARE,
    SHARE_KEYS,
    UNMASKING,
    Channel,
    ProtocolError,
    SecAggHospital,
    SecAggServer,
    default_threshold,
    run_additive_sharing,
    run_protocol,
    secure_sum,
    uniformity_pvalue,
)

MAX_ABS = 2.0
PRECISION_BITS = 24


@pytest.fixture(autouse=True)
def quiet_test_mode():
    # Every test uses the seeded mode on purpose; its warning is tested once.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure aggregation runs in its")
        yield


def hospital_values(n, length=8, *, seed=0):
    """Random values with negatives and values at both ends of the range."""
    rng = np.random.default_rng(seed)
    values = {}
    for i in range(n):
        array = rng.uniform(-MAX_ABS, MAX_ABS, length)
        array[0] = MAX_ABS
        array[1] = -MAX_ABS
        values[f"h{i:02d}"] = array
    return values


def check_sum(n, dropped, step, *, seed=0):
    values = hospital_values(n, seed=seed)
    names = list(values)
    dropouts = dict.fromkeys(names[:dropped], step)

    result = secure_sum(
        values,
        max_abs=MAX_ABS,
        precision_bits=PRECISION_BITS,
        dropouts=dropouts,
        seed=n,
    )

    kept = names if step == UNMASKING else names[dropped:]
    expected = sum(values[name] for name in kept)
    assert result.protocol.included == kept
    assert np.max(np.abs(result.total - expected)) <= n * result.encoding.quantum
    if step == MASKED_INPUT:
        assert result.protocol.dropped_before_masking == names[:dropped]
    else:
        assert result.protocol.dropped_after_masking == names[:dropped]


@pytest.mark.parametrize("n", range(3, 13))
@pytest.mark.parametrize("step", [MASKED_INPUT, UNMASKING])
def test_every_dropout_count_small(n, step):
    for dropped in range(1, n - default_threshold(n) + 1):
        check_sum(n, dropped, step)


@pytest.mark.parametrize("n", [13, 20, 31, 50])
@pytest.mark.parametrize("step", [MASKED_INPUT, UNMASKING])
def test_every_dropout_count_large(n, step):
    for dropped in range(1, n - default_threshold(n) + 1):
        check_sum(n, dropped, step)


@pytest.mark.parametrize("n", range(3, 51))
def test_no_dropout_every_size(n):
    check_sum(n, 0, UNMASKING)


def test_mixed_dropouts_at_every_step():
    values = hospital_values(9)
    names = list(values)
    dropouts = {
        names[0]: ADVERTISE_KEYS,
        names[1]: SHARE_KEYS,
        names[2]: MASKED_INPUT,
        names[3]: UNMASKING,
    }

    result = secure_sum(values, max_abs=MAX_ABS, threshold=5, dropouts=dropouts, seed=1)

    kept = names[3:]
    assert result.protocol.left_out == names[:2]
    assert list(result.protocol.seconds) == [
        ADVERTISE_KEYS,
        SHARE_KEYS,
        MASKED_INPUT,
        UNMASKING,
    ]
    assert all(seconds >= 0 for seconds in result.protocol.seconds.values())
    assert result.protocol.dropped_before_masking == [names[2]]
    assert result.protocol.dropped_after_masking == [names[3]]
    expected = sum(values[name] for name in kept)
    assert np.max(np.abs(result.total - expected)) <= 9 * result.encoding.quantum


@pytest.mark.parametrize("step", [ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASKING])
def test_fewer_than_threshold_raises(step):
    values = hospital_values(5)
    dropouts = dict.fromkeys(list(values)[:3], step)

    with pytest.raises(ProtocolError, match="fewer than the threshold 3"):
        secure_sum(values, max_abs=MAX_ABS, dropouts=dropouts, seed=2)


def test_configurable_threshold_allows_more_dropouts():
    values = hospital_values(6)
    dropouts = dict.fromkeys(list(values)[:4], MASKED_INPUT)

    with pytest.raises(ProtocolError, match="threshold 4"):
        secure_sum(values, max_abs=MAX_ABS, dropouts=dropouts, seed=3)
    result = secure_sum(values, max_abs=MAX_ABS, dropouts=dropouts, threshold=2, seed=3)
    expected = values["h04"] + values["h05"]
    assert np.max(np.abs(result.total - expected)) <= 6 * result.encoding.quantum


def test_default_threshold_is_majority():
    assert [default_threshold(n) for n in (2, 3, 4, 5, 10, 50)] == [2, 2, 3, 3, 6, 26]
    with pytest.raises(ValueError, match="at least 2 hospitals"):
        default_threshold(1)


def test_invalid_threshold_rejected():
    values = hospital_values(4)
    for threshold in (1, 5):
        with pytest.raises(ValueError, match="threshold must lie in 2..4"):
            secure_sum(values, max_abs=MAX_ABS, threshold=threshold, seed=0)


def test_server_record_holds_only_masked_vectors():
    values = hospital_values(5, length=4096, seed=4)
    encoding = FixedPoint(precision_bits=PRECISION_BITS, max_abs=MAX_ABS, n_summands=5)
    encoded = {name: encoding.encode(value) for name, value in values.items()}
    channel = Channel()

    run_protocol(encoded, encoding=encoding, channel=channel, seed=4)

    masked = {m.sender: m.payload for m in channel.received(step=MASKED_INPUT)}
    assert sorted(masked) == sorted(values)
    for name, vector in masked.items():
        own = encoding.to_signed(encoded[name]).astype(np.float64)
        assert np.mean(vector == encoded[name]) < 0.01
        # Independent vectors of 4096 values correlate by about 0.016 (one
        # standard deviation); an unmasked update would correlate by 1.
        correlation = np.corrcoef(vector.astype(np.float64), own)[0, 1]
        assert abs(correlation) < 0.1, (name, correlation)
        assert uniformity_pvalue(vector, ring_bits=encoding.ring_bits) > 1e-4
    # No other message carries a float or an unmasked vector.
    for message in channel.messages:
        if message.step != MASKED_INPUT:
            assert not isinstance(message.payload, np.ndarray)


def test_removing_any_one_mask_breaks_sum():
    values = hospital_values(4, length=64, seed=5)
    encoding = FixedPoint(precision_bits=PRECISION_BITS, max_abs=MAX_ABS, n_summands=4)
    encoded = {name: encoding.encode(value) for name, value in values.items()}
    channel = Channel()
    result = run_protocol(encoded, encoding=encoding, channel=channel, seed=5)
    masked = {m.sender: m.payload for m in channel.received(step=MASKED_INPUT)}
    sides = result.hospitals
    true_sum = encoding.add(*encoded.values())
    self_masks = {name: side.self_mask(64) for name, side in sides.items()}

    unmasked = encoding.add(
        *masked.values(), *(encoding.negate(m) for m in self_masks.values())
    )
    assert np.array_equal(unmasked, true_sum)
    assert np.array_equal(result.total, true_sum)

    for name in sides:
        left_in = encoding.add(unmasked, self_masks[name])
        assert np.mean(left_in == true_sum) < 0.05
        for peer in sides:
            if peer == name:
                continue
            mask = sides[name].pairwise_mask(peer, 64)
            signed = mask if sides[name].adds_mask_with(peer) else encoding.negate(mask)
            broken = encoding.add(unmasked, encoding.negate(signed))
            assert np.mean(broken == true_sum) < 0.05, (name, peer)


def test_pairwise_masks_cancel_between_peers():
    encoding = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=3)
    encoded = {name: encoding.encode(np.zeros(32)) for name in ("a", "b", "c")}
    result = run_protocol(encoded, encoding=encoding, seed=6)
    a, b = result.hospitals["a"], result.hospitals["b"]

    assert np.array_equal(a.pairwise_mask("b", 32), b.pairwise_mask("a", 32))
    assert a.adds_mask_with("b")
    assert not b.adds_mask_with("a")
    assert not np.array_equal(a.pairwise_mask("b", 32), a.pairwise_mask("c", 32))


def test_server_asks_exactly_one_share_per_hospital():
    values = hospital_values(7)
    names = list(values)
    dropouts = {names[0]: MASKED_INPUT, names[1]: MASKED_INPUT, names[2]: UNMASKING}
    channel = Channel()

    secure_sum(values, max_abs=MAX_ABS, dropouts=dropouts, channel=channel, seed=7)

    answers = channel.received(step=UNMASKING)
    assert sorted(m.sender for m in answers) == sorted(names[3:])
    for message in answers:
        assert sorted(message.payload) == sorted(names)
        for hospital, (kind, share) in message.payload.items():
            expected = KEY_SHARE if hospital in names[:2] else SEED_SHARE
            assert kind == expected, (message.sender, hospital, kind)
            assert share[0] == names.index(message.sender) + 1


def run_steps_until_routed(n=4, seed=8):
    encoding = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=n)
    names = [f"h{i}" for i in range(n)]
    threshold = default_threshold(n)
    channel = Channel()
    sides = {
        name: SecAggHospital(
            name,
            names=names,
            threshold=threshold,
            session="s",
            encoding=encoding,
            rng=RandomSource(f"{seed}{name}".encode(), warn=False),
        )
        for name in names
    }
    server = SecAggServer(
        names=names,
        threshold=threshold,
        session="s",
        encoding=encoding,
        length=3,
        channel=channel,
    )
    for name in names:
        channel.send("s", ADVERTISE_KEYS, name, sides[name].advertise_keys())
    keys = server.public_keys()
    for name in names:
        channel.send("s", SHARE_KEYS, name, sides[name].share_keys(keys))
    return encoding, names, sides, server, channel, server.route_shares()


def finish_steps(
    encoding, names, sides, server, channel, routed, *, tamper=None, drop=None
):
    """Run steps 3 and 4, letting `tamper(responder, response)` edit a response."""
    for name in names:
        if name == drop:
            continue
        vector = encoding.encode(np.array([0.5, -0.25, 1.0]))
        channel.send(
            "s", MASKED_INPUT, name, sides[name].masked_input(vector, routed[name])
        )
    survivors = server.survivors()
    for name in survivors:
        response = sides[name].unmask(survivors)
        if tamper is not None:
            tamper(name, response)
        channel.send("s", UNMASKING, name, response)
    return server.aggregate()


def test_step_by_step_protocol_sums():
    parts = run_steps_until_routed()
    encoding = parts[0]

    total = finish_steps(*parts)

    assert np.array_equal(encoding.decode(total), [2.0, -1.0, 4.0])


def test_tampered_share_detected():
    encoding, names, sides, server, channel, routed = run_steps_until_routed()
    ciphertext = routed["h1"]["h0"]
    routed["h1"]["h0"] = ciphertext[:20] + bytes([ciphertext[20] ^ 1]) + ciphertext[21:]

    with pytest.raises(ProtocolError, match="could not authenticate the shares"):
        finish_steps(encoding, names, sides, server, channel, routed)


def test_redirected_share_detected():
    encoding, names, sides, server, channel, routed = run_steps_until_routed()
    # The server hands h1 the ciphertext h0 addressed to h2.
    routed["h1"]["h0"] = routed["h2"]["h0"]

    with pytest.raises(ProtocolError, match="'h1' could not authenticate"):
        finish_steps(encoding, names, sides, server, channel, routed)


def test_hospital_runs_each_step_once_in_order():
    encoding, names, sides, server, channel, routed = run_steps_until_routed()

    with pytest.raises(ProtocolError, match="already ran step"):
        sides["h0"].advertise_keys()
    with pytest.raises(ProtocolError, match="before 'masked_input'"):
        sides["h0"].unmask(names)
    vector = encoding.encode(np.zeros(3))
    sides["h0"].masked_input(vector, routed["h0"])
    with pytest.raises(ProtocolError, match="already ran step 'masked_input'"):
        sides["h0"].masked_input(vector, routed["h0"])


def test_hospital_rejects_survivor_list_without_itself():
    encoding, names, sides, server, channel, routed = run_steps_until_routed()
    vector = encoding.encode(np.zeros(3))
    sides["h0"].masked_input(vector, routed["h0"])

    with pytest.raises(ProtocolError, match="rejects the survivor list"):
        sides["h0"].unmask(["h1", "h2", "h3"])


def test_server_rejects_duplicate_and_wrong_length_messages():
    encoding, names, sides, server, channel, routed = run_steps_until_routed()
    channel.send("s", MASKED_INPUT, "h0", np.zeros(4, dtype=np.uint64))
    with pytest.raises(ValueError, match="has 4 elements, expected 3"):
        server.survivors()

    channel.send("s", MASKED_INPUT, "h0", np.zeros(3, dtype=np.uint64))
    with pytest.raises(ProtocolError, match="sent two messages"):
        server.survivors()


def test_server_rejects_float_masked_input():
    encoding, names, sides, server, channel, routed = run_steps_until_routed()
    channel.send("s", MASKED_INPUT, "h0", np.zeros(3))

    with pytest.raises(ValueError, match="uint64 array"):
        server.survivors()


def test_mismatched_lengths_and_shapes_rejected():
    encoding = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=3)
    encoded = {
        "a": encoding.encode(np.zeros(3)),
        "b": encoding.encode(np.zeros(3)),
        "c": encoding.encode(np.zeros(4)),
    }
    with pytest.raises(ValueError, match="one length"):
        run_protocol(encoded, encoding=encoding, seed=0)
    with pytest.raises(ValueError, match="one shape"):
        secure_sum({"a": np.zeros(3), "b": np.zeros((3, 1))}, max_abs=1.0, seed=0)


def test_out_of_range_value_names_hospital():
    values = {"a": np.array([0.5]), "b": np.array([1.5]), "c": np.array([0.0])}

    with pytest.raises(ValueError, match="Hospital 'b'.*outside the encoding's range"):
        secure_sum(values, max_abs=1.0, seed=0)


def test_invalid_dropouts_rejected():
    values = hospital_values(3)
    with pytest.raises(ValueError, match="unknown hospitals"):
        secure_sum(values, max_abs=MAX_ABS, dropouts={"zz": UNMASKING}, seed=0)
    with pytest.raises(ValueError, match="one of"):
        secure_sum(values, max_abs=MAX_ABS, dropouts={"h00": "later"}, seed=0)


def test_seeded_mode_reproducible_and_secure_mode_random():
    values = hospital_values(3)

    def masked_vectors(seed):
        channel = Channel()
        secure_sum(values, max_abs=MAX_ABS, channel=channel, seed=seed)
        return [m.payload for m in channel.received(step=MASKED_INPUT)]

    first, again, other = masked_vectors(1), masked_vectors(1), masked_vectors(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    secure = secure_sum(values, max_abs=MAX_ABS, seed=None)
    assert (
        np.max(np.abs(secure.total - sum(values.values())))
        <= 3 * secure.encoding.quantum
    )


def test_seeded_mode_warns(monkeypatch):
    monkeypatch.setattr(crypto, "_seeded_warning_shown", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        secure_sum(hospital_values(3), max_abs=MAX_ABS, seed=0)
    assert any("deployment must" in str(w.message) for w in caught)


def test_channel_counts_bytes_and_summarises():
    values = hospital_values(3, length=10)
    channel = Channel()

    secure_sum(values, max_abs=MAX_ABS, channel=channel, session="r1", seed=0)

    steps = [m.step for m in channel.received("r1")]
    assert (
        steps
        == [ADVERTISE_KEYS] * 3
        + [SHARE_KEYS] * 3
        + [MASKED_INPUT] * 3
        + [UNMASKING] * 3
    )
    masked = channel.received("r1", MASKED_INPUT)
    assert all(m.n_bytes == 80 for m in masked)
    # Two 32-byte public keys and a 32-byte seed commitment.
    assert all(m.n_bytes == 96 for m in channel.received("r1", ADVERTISE_KEYS))
    assert channel.bytes_received("r1") == sum(m.n_bytes for m in channel.messages)
    assert channel.bytes_sent("r1") > 0
    assert channel.received("other") == []
    rows = channel.summary()
    assert len(rows) == 12
    assert rows[6]["payload"] == "masked vector, 10 ring elements"
    assert rows[0]["payload"] == "2 public keys and a seed commitment"
    with pytest.raises(ValueError, match="step must be one of"):
        channel.send("r1", "gossip", "h00", b"")


def test_additive_sharing_sums_and_hides_inputs():
    values = hospital_values(5, length=2048, seed=9)
    encoding = FixedPoint(precision_bits=PRECISION_BITS, max_abs=MAX_ABS, n_summands=5)
    encoded = {name: encoding.encode(value) for name, value in values.items()}
    channel = Channel()

    total = run_additive_sharing(encoded, encoding=encoding, channel=channel, seed=9)

    assert np.array_equal(total, encoding.add(*encoded.values()))
    peer_sums = channel.received(step=PEER_SUM)
    assert [m.sender for m in peer_sums] == list(values)
    for message in peer_sums:
        assert np.mean(message.payload == encoded[message.sender]) < 0.01
        assert uniformity_pvalue(message.payload, ring_bits=encoding.ring_bits) > 1e-4
    assert channel.summary()[0]["payload"] == "sum of shares, 2048 ring elements"


def test_additive_sharing_rejects_one_hospital():
    encoding = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=2)

    with pytest.raises(ValueError, match="at least 2 hospitals"):
        run_additive_sharing({"a": encoding.encode([0.5])}, encoding=encoding)
    with pytest.raises(ValueError, match="one length"):
        run_additive_sharing(
            {"a": encoding.encode([0.5]), "b": encoding.encode([0.5, 0.1])},
            encoding=encoding,
        )


def test_uniformity_pvalue_flags_structure():
    ring_bits = 20
    uniform = np.random.default_rng(0).integers(0, 2**ring_bits, 4000).astype(np.uint64)
    small = np.arange(4000, dtype=np.uint64)

    assert uniformity_pvalue(uniform, ring_bits=ring_bits) > 1e-3
    assert uniformity_pvalue(small, ring_bits=ring_bits) < 1e-10
    with pytest.raises(ValueError, match="at least"):
        uniformity_pvalue(uniform[:10], ring_bits=ring_bits)
    with pytest.raises(ValueError, match="power of two"):
        uniformity_pvalue(uniform, ring_bits=ring_bits, bins=10)


def test_more_hospitals_than_summands_rejected():
    # A ring sized for 2 summands would wrap on the sum of 3 values of 1.0.
    encoding = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=2)
    encoded = {name: encoding.encode([1.0]) for name in ("a", "b", "c")}
    message = "3 hospitals send inputs.*at most 2 values.*n_summands=3 or more"

    with pytest.raises(ValueError, match=message):
        run_protocol(encoded, encoding=encoding, seed=0)
    with pytest.raises(ValueError, match=message):
        run_additive_sharing(encoded, encoding=encoding, seed=0)


@pytest.mark.parametrize("run", [run_protocol, run_additive_sharing])
def test_inputs_must_be_ring_vectors(run):
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=2)
    good = encoding.encode([0.5])

    with pytest.raises(
        ValueError, match="input of hospital 'b' must be a uint64.*float"
    ):
        run({"a": good, "b": np.array([0.5])}, encoding=encoding, seed=0)
    beyond = np.array([encoding.modulus], dtype=np.uint64)
    with pytest.raises(ValueError, match="'b' contains values outside the 7-bit ring"):
        run({"a": good, "b": beyond}, encoding=encoding, seed=0)


def test_input_of_early_dropout_still_checked():
    encoding = FixedPoint(precision_bits=4, max_abs=1.0, n_summands=3)
    encoded = {name: encoding.encode([0.5]) for name in ("a", "b", "c")}
    encoded["a"] = np.array([0.5])

    with pytest.raises(ValueError, match="input of hospital 'a'"):
        run_protocol(encoded, encoding=encoding, dropouts={"a": ADVERTISE_KEYS})


def advertise_all(n=4, *, replace=None, seed=8):
    """Run step 1; `replace(keys)` may change h2's message before it is sent."""
    encoding = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=n)
    names = [f"h{i}" for i in range(n)]
    channel = Channel()
    sides = {
        name: SecAggHospital(
            name,
            names=names,
            threshold=default_threshold(n),
            session="s",
            encoding=encoding,
            rng=RandomSource(f"{seed}{name}".encode(), warn=False),
        )
        for name in names
    }
    server = SecAggServer(
        names=names,
        threshold=default_threshold(n),
        session="s",
        encoding=encoding,
        length=3,
        channel=channel,
    )
    for name in names:
        keys = sides[name].advertise_keys()
        if name == "h2" and replace is not None:
            keys = replace(keys)
        channel.send("s", ADVERTISE_KEYS, name, keys)
    return sides, server


@pytest.mark.parametrize(
    "replace, message",
    [
        (
            lambda keys: dataclasses.replace(keys, masking=b"\x01" * 5),
            "its masking key must be 32 raw bytes, got 5 bytes",
        ),
        (
            lambda keys: dataclasses.replace(keys, masking=bytes(32)),
            "its masking key is a low-order X25519 point",
        ),
        (
            lambda keys: dataclasses.replace(keys, encryption="x" * 32),
            "its encryption key must be 32 raw bytes, got str",
        ),
        (
            lambda keys: {"masking": keys.masking},
            "sent a dict in step 'advertise_keys', expected PublicKeys",
        ),
        (
            lambda keys: dataclasses.replace(keys, seed_commitment=None),
            "no valid commitment to its self-mask seed",
        ),
        (
            lambda keys: dataclasses.replace(keys, seed_commitment=b"short"),
            "no valid commitment to its self-mask seed",
        ),
    ],
    ids=["short", "low order", "str", "not keys", "no commitment", "short commit"],
)
def test_server_rejects_malformed_advertisement(replace, message):
    sides, server = advertise_all(replace=replace)

    with pytest.raises(ProtocolError, match=f"Hospital 'h2' .*{message}"):
        server.public_keys()


def test_hospital_rejects_bad_forwarded_key():
    sides, server = advertise_all()
    keys = server.public_keys()
    low_order = dict(keys, h2=dataclasses.replace(keys["h2"], encryption=bytes(32)))
    short = dict(keys, h2=dataclasses.replace(keys["h2"], masking=b"\x01" * 5))

    with pytest.raises(ProtocolError, match="'h0' cannot agree a key with 'h2'"):
        sides["h0"].share_keys(low_order)
    with pytest.raises(ProtocolError, match="keys of 'h2' are not two 32-byte"):
        sides["h1"].share_keys(short)


def test_advertisement_commits_to_self_mask_seed():
    sides, server = advertise_all()

    keys = server.public_keys()

    commitments = [k.seed_commitment for k in keys.values()]
    assert all(len(c) == 32 for c in commitments)
    assert len(set(commitments)) == 4
    # The commitment opens to the seed behind the hospital's self-mask.
    seed = sides["h1"]._seed
    # 4 summands of magnitude 2^8 need 11 bits plus a sign bit.
    assert crypto.expand_mask(seed, 3, ring_bits=12).tolist() == (
        sides["h1"].self_mask(3).tolist()
    )
    assert keys["h1"].seed_commitment == crypto.commitment(
        seed, context=b"self-mask seed|s|h1"
    )


def test_tampered_seed_share_detected():
    parts = run_steps_until_routed()

    def add_one(responder, response):
        # h0 adds 1 to its share of h1's seed, which would shift the sum silently.
        if responder == "h0":
            kind, (x, y) = response["h1"]
            response["h1"] = (kind, (x, y + 1))

    message = "self-mask seed rebuilt for 'h1' does not match the commitment"
    with pytest.raises(ProtocolError, match=message):
        finish_steps(*parts, tamper=add_one)


def test_tampered_key_share_detected():
    encoding, names, sides, server, channel, routed = run_steps_until_routed()

    def add_one(responder, response):
        if responder == "h0":
            kind, (x, y) = response["h3"]
            response["h3"] = (kind, (x, y + 1))

    with pytest.raises(ProtocolError, match="'h3' does not match its advertised"):
        finish_steps(
            encoding, names, sides, server, channel, routed, tamper=add_one, drop="h3"
        )


def test_malformed_share_in_response_is_protocol_error():
    parts = run_steps_until_routed()

    def repeat_x(responder, response):
        if responder == "h1":
            for hospital, (kind, (_, y)) in response.items():
                response[hospital] = (kind, (1, y))

    with pytest.raises(ProtocolError, match="seed of 'h0' are invalid.*distinct x"):
        finish_steps(*parts, tamper=repeat_x)


def test_names_as_string_rejected():
    encoding = FixedPoint(precision_bits=8, max_abs=1.0, n_summands=3)
    rng = RandomSource(1, warn=False)

    with pytest.raises(TypeError, match="names must be a list.*got the string 'abc'"):
        SecAggHospital(
            "a", names="abc", threshold=2, session="s", encoding=encoding, rng=rng
        )
    with pytest.raises(TypeError, match="names must be a list"):
        SecAggServer(
            names="abc",
            threshold=2,
            session="s",
            encoding=encoding,
            length=1,
            channel=Channel(),
        )


def test_numpy_settings_accepted_bools_rejected():
    values = hospital_values(4)

    result = secure_sum(
        values,
        max_abs=np.float32(MAX_ABS),
        precision_bits=np.int64(16),
        threshold=np.int64(2),
        seed=np.int64(1),
    )

    assert default_threshold(np.int64(5)) == 3
    assert result.encoding.precision_bits == 16
    assert np.max(np.abs(result.total - sum(values.values()))) <= 4 * 2.0**-16
    with pytest.raises(TypeError, match="n_hospitals must be an int"):
        default_threshold(True)
    with pytest.raises(TypeError, match="threshold must be an int, got True"):
        secure_sum(values, max_abs=MAX_ABS, threshold=True, seed=0)
    with pytest.raises(TypeError, match="threshold must be an int, got '3'"):
        secure_sum(values, max_abs=MAX_ABS, threshold="3", seed=0)
    with pytest.raises(TypeError, match="max_abs must be a real number"):
        secure_sum(values, max_abs=True, seed=0)


def test_uniformity_pvalue_rejects_wrong_types():
    values = np.arange(100, dtype=np.uint64)

    with pytest.raises(TypeError, match="bins must be an int"):
        uniformity_pvalue(values, ring_bits=8, bins=4.0)
    with pytest.raises(TypeError, match="values must be unsigned integers"):
        uniformity_pvalue(values.astype(np.float64), ring_bits=8, bins=4)


def test_secure_sum_rejects_non_real_values():
    for bad in ("1", np.array([0.5 + 1j])):
        with pytest.raises(TypeError, match="Hospital 'b': FixedPoint.encode takes"):
            secure_sum({"a": np.array([0.5]), "b": bad}, max_abs=1.0, seed=0)
    with pytest.raises(ValueError, match="at least 2 hospitals, got 0"):
        secure_sum({}, max_abs=1.0, seed=0)
