"""Tests for DP-SGD inside hospitals, privacy accounting and hospital-level DP."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.validators import ModuleValidator
from opacus.validators.errors import UnsupportedModuleError
from torch import nn
from torch.utils.data import TensorDataset

from helpers.datasets import images_to_tensor
from helpers.federated import fedavg, run_federated
from helpers.hospital import Hospital, LeaveFederation, Update
from helpers.models import SkinLesionCNN
from helpers.privacy import (
    ACCOUNTANT,
    RDP_ORDERS,
    DPFedAvg,
    DPSGDStep,
    bounded_total_weight,
    check_dp_model,
    default_delta,
    epsilon_floor,
    epsilon_spent,
    epsilon_table,
    group_epsilon,
    group_epsilon_delta,
    plan_dp_fedavg,
    plan_dp_sgd,
    solve_noise_multiplier,
    split_sites,
)
from helpers.splits import Partition

SIDE = 8
N_CLASSES = 3

# Opacus warns about the pseudo-random generator once per PrivacyEngine. Its RDP
# conversion may also warn about its order range. The tests that need a warning
# check it explicitly.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Optimal order is the"),
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run this file's tiny models on one thread, restoring the count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def separable_part(n, *, seed):
    """Images whose class c (0..2) lights up colour channel c, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, size=n).astype(np.int64)
    images = rng.integers(0, 60, size=(n, SIDE, SIDE, 3))
    images[np.arange(n), :, :, labels] += 180
    return images.astype(np.uint8), labels


def make_hospitals(sizes=(24, 40, 16)):
    return [
        Hospital(
            f"h{i}",
            train=separable_part(n, seed=10 * i),
            val=separable_part(8, seed=10 * i + 1),
            test=separable_part(8, seed=10 * i + 2),
        )
        for i, n in enumerate(sizes)
    ]


def tiny_model(seed=0):
    return SkinLesionCNN(width=4, groups=2, side=SIDE, seed=seed)


def tiny_dataset(n, seed=0):
    images, labels = separable_part(n, seed=seed)
    return TensorDataset(images_to_tensor(images), torch.as_tensor(labels))


def dp_step(n=24, **overrides):
    settings = dict(
        hospital="h",
        n_samples=n,
        batch_size=8,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-3,
    )
    settings.update(overrides)
    return DPSGDStep(**settings)


def federate(hospitals, steps, *, rounds, fraction=1.0, seed=0, **options):
    model = tiny_model()
    history = run_federated(
        model,
        hospitals,
        rounds=rounds,
        lr=0.1,
        batch_size=8,
        fraction=fraction,
        seed=seed,
        local_steps=steps,
        progress=False,
        **options,
    )
    return model, history


def fixed_steps(hospitals, *, noise_multiplier=1.1, max_steps=None):
    return {
        h.name: DPSGDStep(
            hospital=h.name,
            n_samples=h.n_samples,
            batch_size=8,
            noise_multiplier=noise_multiplier,
            max_grad_norm=1.0,
            delta=1e-3,
            max_steps=max_steps,
        )
        for h in hospitals
    }


def accountant_epsilon(noise_multiplier, sample_rate, steps, delta):
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


# Accounting across rounds.


def test_epsilon_composes_over_rounds():
    hospitals = make_hospitals()
    steps = fixed_steps(hospitals)

    _, history = federate(hospitals, steps, rounds=3)

    for hospital in hospitals:
        step = steps[hospital.name]
        total_steps = 3 * math.ceil(hospital.n_samples / 8)
        assert step.steps == total_steps
        one_accountant = accountant_epsilon(1.1, step.sample_rate, total_steps, 1e-3)
        direct = epsilon_spent(
            noise_multiplier=1.1,
            sample_rate=step.sample_rate,
            steps=total_steps,
            delta=1e-3,
        )
        assert step.epsilon() == pytest.approx(one_accountant, abs=1e-6)
        assert step.epsilon() == pytest.approx(direct, abs=1e-6)
    table = epsilon_table(history, steps)
    assert list(table.index) == [1, 2, 3]
    assert (table.diff().iloc[1:] > 0).all().all()
    assert table.iloc[-1].to_dict() == pytest.approx(
        {name: step.epsilon() for name, step in steps.items()}
    )


def test_accountant_is_one_object_for_the_run():
    hospitals = make_hospitals()
    steps = fixed_steps(hospitals)
    accountants = {name: step.accountant for name, step in steps.items()}

    federate(hospitals, steps, rounds=2)

    for name, step in steps.items():
        assert step.accountant is accountants[name]
        assert len(step.accountant.history) == 1


def test_epsilon_stays_put_while_sitting_out():
    hospitals = make_hospitals()
    steps = fixed_steps(hospitals)

    _, history = federate(hospitals, steps, rounds=6, fraction=0.34)

    table = epsilon_table(history, steps)
    sat_out = took_part = 0
    for position, record in enumerate(history):
        previous = table.iloc[position - 1] if position else None
        for name in steps:
            now = table.iloc[position][name]
            before = 0.0 if previous is None else previous[name]
            if name in record["hospitals"]:
                assert now > before
                took_part += 1
            else:
                assert now == before
                sat_out += 1
    assert took_part == 6
    assert sat_out == 12


def test_epsilon_does_not_depend_on_seed():
    epsilons = []
    for seed in (0, 1):
        hospitals = make_hospitals()
        steps = fixed_steps(hospitals)
        model, _ = federate(hospitals, steps, rounds=2, seed=seed)
        epsilons.append({name: step.epsilon() for name, step in steps.items()})
        weights = model.state_dict()["head.weight"].clone()
        if seed == 0:
            first_weights = weights
    assert epsilons[0] == epsilons[1]
    assert not torch.equal(first_weights, weights)


def test_epsilon_spent_matches_opacus_functions():
    rdp = rdp_analysis.compute_rdp(
        q=0.05, noise_multiplier=0.9, steps=200, orders=list(RDP_ORDERS)
    )
    expected, _ = rdp_analysis.get_privacy_spent(
        orders=list(RDP_ORDERS), rdp=rdp, delta=1e-5
    )

    got = epsilon_spent(noise_multiplier=0.9, sample_rate=0.05, steps=200, delta=1e-5)

    assert ACCOUNTANT == "rdp"
    assert got == pytest.approx(float(expected), abs=1e-9)
    assert 1 < got < 10
    assert (
        epsilon_spent(noise_multiplier=0.9, sample_rate=0.05, steps=0, delta=1e-5) == 0
    )
    assert math.isinf(
        epsilon_spent(noise_multiplier=0.0, sample_rate=0.05, steps=1, delta=1e-5)
    )


# The budget for a whole run.


@pytest.mark.parametrize(
    ("target", "sample_rate", "steps"),
    [(1.0, 0.01, 1000), (8.0, 0.1, 300), (3.0, 1.0, 10), (0.5, 0.2, 4)],
)
def test_solved_noise_meets_target(target, sample_rate, steps):
    noise = solve_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=sample_rate, steps=steps
    )

    epsilon = accountant_epsilon(noise, sample_rate, steps, 1e-5)

    assert epsilon <= target
    assert epsilon >= 0.95 * target


def test_plan_meets_target_after_full_run():
    hospitals = make_hospitals()
    steps = plan_dp_sgd(
        hospitals,
        target_epsilon=4.0,
        delta=1e-3,
        rounds=3,
        local_epochs=2,
        batch_size=8,
        max_grad_norm=1.0,
    )

    federate(hospitals, steps, rounds=3, local_epochs=2)

    for hospital in hospitals:
        step = steps[hospital.name]
        assert step.max_steps == 3 * 2 * math.ceil(hospital.n_samples / 8)
        assert step.steps == step.max_steps
        assert step.epsilon() <= 4.0
        assert step.epsilon() >= 0.95 * 4.0


def test_plan_uses_default_delta_per_hospital():
    hospitals = make_hospitals((24, 40))

    steps = plan_dp_sgd(
        hospitals,
        target_epsilon=2.0,
        rounds=1,
        local_epochs=1,
        batch_size=8,
        max_grad_norm=1.0,
    )

    for hospital in hospitals:
        assert steps[hospital.name].delta == pytest.approx(0.1 / hospital.n_samples)
        assert steps[hospital.name].delta < 1 / hospital.n_samples


# Leaving before overspending.


def test_step_leaves_before_overspending():
    step = dp_step(max_steps=6)
    model = tiny_model()
    dataset = tiny_dataset(24)
    generator = torch.Generator().manual_seed(0)
    options = dict(local_epochs=1, lr=0.1, batch_size=8, generator=generator)
    step(model, dataset, **options)
    step(model, dataset, **options)
    spent = step.epsilon()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(LeaveFederation, match="'h' would take 3 more steps"):
        step(model, dataset, **options)

    assert step.steps == 6
    assert step.epsilon() == spent
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_overspending_hospital_leaves_and_others_go_on(caplog):
    hospitals = make_hospitals()
    steps = fixed_steps(hospitals)
    short = steps["h1"]
    steps["h1"] = DPSGDStep(
        hospital="h1",
        n_samples=short.n_samples,
        batch_size=8,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
        delta=1e-3,
        max_steps=short.steps_per_epoch,
    )

    with caplog.at_level(logging.WARNING, logger="helpers.federated"):
        _, history = federate(hospitals, steps, rounds=3)

    assert [record["hospitals"] for record in history] == [
        ("h0", "h1", "h2"),
        ("h0", "h2"),
        ("h0", "h2"),
    ]
    assert [record["left"] for record in history] == [(), ("h1",), ()]
    assert steps["h1"].steps == steps["h1"].max_steps
    assert steps["h0"].steps == 3 * steps["h0"].steps_per_epoch
    assert "hospital 'h1' left the federation" in caplog.text
    assert caplog.text.count("left the federation") == 1


def test_run_extended_past_plan_stops_every_hospital(caplog):
    hospitals = make_hospitals()
    steps = plan_dp_sgd(
        hospitals,
        target_epsilon=3.0,
        delta=1e-3,
        rounds=2,
        local_epochs=1,
        batch_size=8,
        max_grad_norm=1.0,
    )

    with caplog.at_level(logging.WARNING, logger="helpers.federated"):
        model, history = federate(hospitals, steps, rounds=4)

    assert len(history) == 3
    assert history[2]["left"] == ("h0", "h1", "h2")
    assert history[2]["hospitals"] == ()
    assert "no hospital is left" in caplog.text
    assert all(step.epsilon() <= 3.0 for step in steps.values())


# The step itself.


def test_small_hospital_with_empty_batches_trains():
    step = dp_step(n=20, batch_size=1, delta=1e-3)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    loss = step(
        model,
        tiny_dataset(20),
        local_epochs=3,
        lr=0.1,
        batch_size=1,
        generator=torch.Generator().manual_seed(0),
    )

    assert step.sample_rate == pytest.approx(0.05)
    assert step.steps == 60
    assert step.empty_batches > 0
    assert step.log[0]["empty_batches"] == step.empty_batches
    assert math.isfinite(loss)
    state = model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not torch.equal(state["head.weight"], before["head.weight"])


def test_update_keys_match_plain_model():
    hospital = make_hospitals((24,))[0]
    model = tiny_model()
    keys = list(model.state_dict())
    global_before = {k: v.clone() for k, v in model.state_dict().items()}

    update = hospital.train(
        model, local_epochs=1, lr=0.1, batch_size=8, local_step=dp_step()
    )

    assert list(update.delta) == keys
    assert not any(key.startswith("_module.") for key in update.delta)
    assert any(float(d.abs().max()) > 0 for d in update.delta.values())
    assert all(torch.equal(global_before[k], v) for k, v in model.state_dict().items())


def test_step_removes_opacus_hooks():
    model = tiny_model()
    plain_hooks = sum(len(m._forward_hooks) for m in model.modules())

    dp_step()(
        model,
        tiny_dataset(24),
        local_epochs=1,
        lr=0.1,
        batch_size=8,
        generator=torch.Generator().manual_seed(0),
    )

    assert sum(len(m._forward_hooks) for m in model.modules()) == plain_hooks
    assert sum(len(m._backward_hooks) for m in model.modules()) == 0
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert isinstance(model, SkinLesionCNN)


def test_step_noise_changes_update():
    updates = []
    for noise in (0.0, 5.0):
        model = tiny_model()
        dp_step(noise_multiplier=noise)(
            model,
            tiny_dataset(24),
            local_epochs=1,
            lr=0.1,
            batch_size=8,
            generator=torch.Generator().manual_seed(0),
        )
        updates.append(model.state_dict()["head.weight"].clone())
    assert not torch.allclose(updates[0], updates[1], atol=1e-3)


def test_step_rejects_plan_mismatch():
    step = dp_step()
    options = dict(local_epochs=1, lr=0.1, generator=torch.Generator())
    with pytest.raises(ValueError, match="planned for 24 training images but got 30"):
        step(tiny_model(), tiny_dataset(30), batch_size=8, **options)
    with pytest.raises(ValueError, match="batch_size=8, which sets its sample rate"):
        step(tiny_model(), tiny_dataset(24), batch_size=16, **options)
    with pytest.raises(ValueError, match="'balanced', depend on private data"):
        step(
            tiny_model(),
            tiny_dataset(24),
            batch_size=8,
            class_weights="balanced",
            **options,
        )
    assert step.steps == 0


def test_step_accepts_public_class_weights():
    step = dp_step()
    loss = step(
        tiny_model(),
        tiny_dataset(24),
        local_epochs=1,
        lr=0.1,
        batch_size=8,
        generator=torch.Generator().manual_seed(0),
        class_weights=torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
    )
    assert math.isfinite(loss)
    assert loss > 0


def test_batchnorm_model_rejected_with_opacus_message():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3)
    )
    model(torch.zeros(2, 3, SIDE, SIDE))

    with pytest.raises(UnsupportedModuleError, match="BatchNorm"):
        check_dp_model(model)
    with pytest.raises(UnsupportedModuleError, match="BatchNorm"):
        dp_step()(
            model,
            tiny_dataset(24),
            local_epochs=1,
            lr=0.1,
            batch_size=8,
            generator=torch.Generator(),
        )
    fixed = ModuleValidator.fix(model)
    check_dp_model(fixed)
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())
    check_dp_model(tiny_model())


def test_secure_rng_warning_stays_visible():
    with pytest.warns(UserWarning, match="Secure RNG turned off"):
        dp_step()


# Bad settings.


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"noise_multiplier": -0.1}, "noise_multiplier must be a finite number >= 0"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be a finite number > 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"delta": 0.0}, r"delta must lie in \(0, 1\)"),
        ({"delta": 1.0}, r"delta must lie in \(0, 1\)"),
        ({"delta": -1e-5}, "delta"),
        ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
        ({"max_steps": 0}, "max_steps"),
        ({"grad_sample_mode": "ghost"}, "grad_sample_mode must be one of"),
    ],
)
def test_step_rejects_bad_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        dp_step(**overrides)


@pytest.mark.parametrize("epsilon", [0.0, -1.0, float("inf"), float("nan"), "8"])
def test_solver_rejects_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon must be"):
        solve_noise_multiplier(
            target_epsilon=epsilon, delta=1e-5, sample_rate=0.1, steps=10
        )


@pytest.mark.parametrize("delta", [0.0, 1.0, 1.5, -0.1])
def test_solver_rejects_bad_delta(delta):
    with pytest.raises(ValueError, match=r"delta must lie in \(0, 1\)"):
        solve_noise_multiplier(
            target_epsilon=1.0, delta=delta, sample_rate=0.1, steps=10
        )


def test_solver_rejects_budget_below_one_step():
    floor = epsilon_floor(1e-5)

    with pytest.raises(ValueError, match="too small for a single step"):
        solve_noise_multiplier(
            target_epsilon=0.9 * floor, delta=1e-5, sample_rate=0.1, steps=1
        )

    assert 0.09 < floor < 0.11
    at_huge_noise = epsilon_spent(
        noise_multiplier=1e5, sample_rate=0.1, steps=1, delta=1e-5
    )
    assert at_huge_noise == pytest.approx(floor, rel=1e-6)


def test_plan_rejects_bad_settings():
    hospitals = make_hospitals()
    base = dict(target_epsilon=1.0, delta=1e-5, rounds=2, local_epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="max_grad_norm"):
        plan_dp_sgd(hospitals, max_grad_norm=0, **base)
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
        plan_dp_sgd(hospitals, max_grad_norm=1.0, **{**base, "target_epsilon": 0})
    with pytest.raises(ValueError, match="too small for a single step"):
        plan_dp_sgd(hospitals, max_grad_norm=1.0, **{**base, "target_epsilon": 0.05})
    with pytest.raises(ValueError, match="rounds"):
        plan_dp_sgd(hospitals, max_grad_norm=1.0, **{**base, "rounds": 0})


def test_large_delta_and_epsilon_warn():
    with pytest.warns(UserWarning, match=r"not below 1/n = 0.0417"):
        dp_step(delta=0.05)
    with pytest.warns(UserWarning, match="epsilon=20 is above 10"):
        solve_noise_multiplier(target_epsilon=20, delta=1e-5, sample_rate=0.1, steps=10)


def test_default_delta_is_below_one_over_n():
    assert default_delta(1000) == pytest.approx(1e-4)
    assert default_delta(7) < 1 / 7
    with pytest.raises(ValueError, match="n_samples"):
        default_delta(0)


# Group privacy.


def test_group_epsilon_follows_mironov_proposition_2():
    settings = dict(noise_multiplier=1.0, sample_rate=0.05, steps=300, delta=1e-5)
    orders = [order for order in RDP_ORDERS if order >= 2]
    for group_size, power in [(2, 2), (6, 8)]:
        c = int(math.log2(power))
        rdp = rdp_analysis.compute_rdp(
            q=0.05,
            noise_multiplier=1.0,
            steps=300,
            orders=[order * power for order in orders],
        )
        expected, _ = rdp_analysis.get_privacy_spent(
            orders=orders, rdp=3**c * np.asarray(rdp), delta=1e-5
        )
        got = group_epsilon(group_size=group_size, **settings)
        assert got == pytest.approx(float(expected), rel=1e-9)


def test_group_epsilon_grows_with_group():
    settings = dict(noise_multiplier=1.0, sample_rate=0.05, steps=300, delta=1e-5)
    single = epsilon_spent(**settings)

    by_size = [group_epsilon(group_size=k, **settings) for k in (1, 2, 4, 6)]

    assert by_size[0] == pytest.approx(single, rel=0.05)
    assert by_size[0] >= single
    assert by_size == sorted(by_size)
    assert by_size[3] > 6 * single
    assert by_size[3] == by_size[3]
    with pytest.raises(ValueError, match="group_size"):
        group_epsilon(group_size=0, **settings)


def test_group_epsilon_delta_conversion():
    assert group_epsilon_delta(0.5, 1e-6, 3) == pytest.approx(
        (1.5, 3 * math.exp(1.0) * 1e-6)
    )
    epsilon, delta = group_epsilon_delta(8.0, 1e-5, 6)
    assert epsilon == 48.0
    assert delta > 1
    with pytest.raises(ValueError, match="group_size"):
        group_epsilon_delta(1.0, 1e-5, 0)


# Hospital-level DP.


def constant_update(name, value, n_samples, shape=(2,)):
    return Update(
        hospital=name,
        delta={"w": torch.full(shape, value)},
        n_samples=n_samples,
        train_loss=0.0,
    )


def test_dpfedavg_without_noise_uses_fixed_denominator():
    aggregate = DPFedAvg(
        noise_multiplier=0.0,
        max_update_norm=1.0,
        max_weight=10,
        total_weight=4.0,
        sample_rate=0.5,
    )
    state = {"w": torch.tensor([1.0, -1.0])}
    updates = [constant_update("a", 0.5, 10), constant_update("b", -0.25, 5)]

    new = aggregate(state, updates)

    # (1.0 * 0.5 + 0.5 * -0.25) / (0.5 * 4) = 0.1875
    assert torch.allclose(new["w"], torch.tensor([1.1875, -0.8125]))
    assert aggregate.rounds == 1


def test_dpfedavg_noise_has_planned_scale():
    aggregate = DPFedAvg(
        noise_multiplier=2.0,
        max_update_norm=0.5,
        max_weight=1,
        total_weight=10.0,
        sample_rate=0.2,
        seed=3,
    )
    state = {"w": torch.zeros(20000)}

    new = aggregate(state, [])

    # Noise std z * S / (q * W) = 2 * 0.5 / 2 = 0.5 on the mean.
    assert float(new["w"].std()) == pytest.approx(0.5, rel=0.03)
    assert abs(float(new["w"].mean())) < 0.02


def test_dpfedavg_rejects_unclipped_or_heavy_updates():
    aggregate = DPFedAvg(
        noise_multiplier=1.0,
        max_update_norm=1.0,
        max_weight=10,
        total_weight=4.0,
        sample_rate=0.5,
    )
    state = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="'a' has L2 norm 2.828"):
        aggregate(state, [constant_update("a", 2.0, 10)])
    with pytest.raises(ValueError, match="'b' has weight 11"):
        aggregate(state, [constant_update("b", 0.1, 11)])
    with pytest.raises(ValueError, match="torch.int64"):
        aggregate({"w": torch.zeros(2, dtype=torch.long)}, [])
    assert aggregate.rounds == 0


def test_dpfedavg_accounts_at_hospital_rate():
    hospitals = make_hospitals((24, 40, 16, 20, 30, 12))
    aggregate = plan_dp_fedavg(
        hospitals,
        target_epsilon=5.0,
        delta=0.01,
        rounds=4,
        sample_rate=0.5,
        max_update_norm=0.5,
        max_weight=20,
    )

    _, history = federate(
        hospitals,
        None,
        rounds=4,
        fraction=0.5,
        sampling="poisson",
        aggregate=aggregate,
        max_update_norm=0.5,
        max_weight=20,
    )

    assert aggregate.rounds == 4
    assert aggregate.total_weight == pytest.approx(bounded_total_weight(hospitals, 20))
    assert aggregate.total_weight == pytest.approx(1 + 1 + 0.8 + 1 + 1 + 0.6)
    expected = epsilon_spent(
        noise_multiplier=aggregate.noise_multiplier,
        sample_rate=0.5,
        steps=4,
        delta=0.01,
    )
    assert aggregate.epsilon(0.01) == pytest.approx(expected, abs=1e-9)
    assert 0.95 * 5.0 <= aggregate.epsilon(0.01) <= 5.0
    sampled = [len(record["hospitals"]) for record in history]
    assert len(set(sampled)) > 1
    assert all(0 <= count <= 6 for count in sampled)


def test_dpfedavg_on_empty_round_adds_noise_only():
    aggregate = DPFedAvg(
        noise_multiplier=1.0,
        max_update_norm=1.0,
        max_weight=1,
        total_weight=3.0,
        sample_rate=0.5,
    )
    state = {"w": torch.zeros(3)}

    new = aggregate(state, [])

    assert not torch.equal(new["w"], state["w"])
    assert aggregate.rounds == 1
    with pytest.raises(ValueError, match="No updates"):
        fedavg(state, [])


def test_plan_dp_fedavg_warns_on_large_delta():
    hospitals = make_hospitals((24, 40, 16, 20))
    with pytest.warns(UserWarning, match="not below 1/n = 0.25"):
        plan_dp_fedavg(
            hospitals,
            target_epsilon=2.0,
            delta=0.3,
            rounds=2,
            sample_rate=0.5,
            max_update_norm=1.0,
            max_weight=20,
        )


# Clinics made by splitting sites.


def test_split_sites_keeps_lesions_whole():
    assignment = np.repeat([0, 1], [60, 20])
    lesions = np.arange(80) // 2
    sites = Partition(names=("big", "small"), assignment=assignment, description="s")

    clinics = split_sites(sites, groups=lesions, n_hospitals=8, seed=0)

    assert clinics.n_hospitals == 8
    assert sum(name.startswith("big-") for name in clinics.names) == 6
    assert sum(name.startswith("small-") for name in clinics.names) == 2
    assert clinics.sizes.sum() == 80
    assert clinics.sizes.min() >= 8
    for lesion in np.unique(lesions):
        assert len(set(clinics.assignment[lesions == lesion])) == 1
    for clinic, name in enumerate(clinics.names):
        site = 0 if name.startswith("big-") else 1
        assert set(assignment[clinics.assignment == clinic]) == {site}
    with pytest.raises(ValueError, match="fewer than the 2 sites"):
        split_sites(sites, groups=lesions, n_hospitals=1)
    with pytest.raises(ValueError, match="one lesion id per image"):
        split_sites(sites, groups=lesions[:10], n_hospitals=4)


def test_no_warning_for_valid_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        step = dp_step(delta=None)
    assert step.delta == pytest.approx(0.1 / 24)


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew"])
def test_every_grad_sample_mode_trains_plain_model(mode):
    model = tiny_model()
    keys = list(model.state_dict())
    before = model.state_dict()["head.weight"].clone()

    dp_step(grad_sample_mode=mode)(
        model,
        tiny_dataset(24),
        local_epochs=1,
        lr=0.1,
        batch_size=8,
        generator=torch.Generator().manual_seed(0),
    )

    assert list(model.state_dict()) == keys
    assert not torch.equal(model.state_dict()["head.weight"], before)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
