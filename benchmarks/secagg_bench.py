"""Cost of secure aggregation against plain aggregation and local training.

Measures, on random encoded inputs with keys from os.urandom (the secure mode):

- the PRG's throughput: ChaCha20 expanding a seed into ring elements;
- time and bytes per round against the number of hospitals (at a fixed model
  size) and against the model size (at a fixed number of hospitals). Each is
  also a ratio to plain aggregation (a float64 weighted sum) and to one round's
  local training of the tutorial CNN, which stays the same reference for every
  model size;
- the masking time (the masked-input and unmasking steps, hospitals' and
  server's work added up) against its lower bound: each of n hospitals expands
  n - 1 pairwise masks and one self-mask, and the server expands n self-masks
  to remove them, so n * (n + 1) PRG expansions of the model's length. The key
  advertisement and share exchange before them are counted in the round's
  time but not in the masking time;
- secure aggregation's share of a round's wall time for the tutorial CNN
  (SkinLesionCNN, width 16, 28 px) with 10 hospitals on the synthetic data.

Every timing is the minimum over `repeats` runs, on whatever machine runs the
script, so the figures are measurements of that machine, not constants. The
protocol runs in one process: the times add up all hospitals' work, which real
hospitals would do in parallel, and contain no network latency.

Usage:
    .venv/bin/python benchmarks/secagg_bench.py           # about 1 to 2 minutes
    .venv/bin/python benchmarks/secagg_bench.py --quick   # smaller sizes
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from helpers.crypto import expand_mask
from helpers.datasets import load_dataset
from helpers.federated import cosine_lr, fedavg, run_federated
from helpers.fixed_point import FixedPoint
from helpers.hospital import make_hospitals
from helpers.models import SkinLesionCNN, class_weights
from helpers.secure_aggregation import MASKED_INPUT, UNMASKING, Channel, run_protocol
from helpers.secure_fedavg import SecureAggregator
from helpers.splits import partition_iid, split_by_lesion

# Declared bounds of the random inputs: a weighted update element lies in
# [-MAX_WEIGHT * MAX_UPDATE_NORM, MAX_WEIGHT * MAX_UPDATE_NORM].
MAX_UPDATE_NORM = 1.0
MAX_WEIGHT = 1000
PRECISION_BITS = 24


def benchmark_figures(
    *,
    hospital_counts: Sequence[int] = (3, 10, 25, 50),
    model_sizes: Sequence[int] = (10_000, 100_000, 1_000_000),
    size_for_counts: int = 100_000,
    hospitals_for_sizes: int = 10,
    cnn_hospitals: int = 10,
    cnn_rounds: int = 2,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure secure aggregation's cost and return the figures.

    Returns:
        A dict with "prg" (throughput), "by_hospitals" and "by_model_size"
        (one row per setting), "local_training_seconds" (the reference round)
        and "cnn" (the tutorial CNN's shares of a round).
    """
    rng = np.random.default_rng(seed)
    cnn = cnn_round_shares(n_hospitals=cnn_hospitals, rounds=cnn_rounds, seed=seed)
    training = cnn["local_training_seconds_per_round"]

    figures: dict[str, Any] = {
        "prg": prg_throughput(repeats=repeats),
        "local_training_seconds": training,
        "cnn": cnn,
    }
    figures["by_hospitals"] = [
        protocol_costs(n, size_for_counts, rng=rng, repeats=repeats, training=training)
        for n in hospital_counts
    ]
    figures["by_model_size"] = [
        protocol_costs(
            hospitals_for_sizes, size, rng=rng, repeats=repeats, training=training
        )
        for size in model_sizes
    ]
    return figures


def prg_throughput(*, length: int = 1_000_000, repeats: int = 3) -> dict[str, float]:
    """Time expanding one seed into `length` 64-bit ring elements."""
    seed = bytes(range(32))
    seconds = _best_time(lambda: expand_mask(seed, length, ring_bits=64), repeats)
    return {
        "elements_per_second": length / seconds,
        "megabytes_per_second": 8 * length / seconds / 1e6,
    }


def protocol_costs(
    n_hospitals: int,
    length: int,
    *,
    rng: np.random.Generator,
    repeats: int,
    training: float,
) -> dict[str, float]:
    """Time one protocol instance and plain aggregation for one setting."""
    encoding = FixedPoint(
        precision_bits=PRECISION_BITS,
        max_abs=MAX_WEIGHT * MAX_UPDATE_NORM,
        n_summands=n_hospitals,
    )
    values = rng.uniform(-1, 1, size=(n_hospitals, length))
    weights = rng.integers(1, MAX_WEIGHT, size=n_hospitals)
    encoded = {
        f"h{i}": encoding.encode(weights[i] * values[i]) for i in range(n_hospitals)
    }
    channel = Channel()
    masking_times = []

    def secure_round() -> None:
        channel.messages.clear()
        channel.sent.clear()
        result = run_protocol(encoded, encoding=encoding, channel=channel)
        masking_times.append(result.seconds[MASKED_INPUT] + result.seconds[UNMASKING])

    def plain_round() -> None:
        # What fedavg computes: the weighted sum in float64, then the mean.
        total = np.zeros(length)
        for weight, value in zip(weights, values, strict=True):
            total += weight * value
        total /= weights.sum()

    secure = _best_time(secure_round, repeats)
    plain = _best_time(plain_round, repeats)
    one_mask = _best_time(
        lambda: expand_mask(bytes(32), length, ring_bits=encoding.ring_bits), repeats
    )
    bound = n_hospitals * (n_hospitals + 1) * one_mask
    masking = min(masking_times)

    # Plain FedAvg uploads float32 updates and an 8-byte sample count.
    plain_bytes = n_hospitals * (4 * length + 8)
    return {
        "hospitals": n_hospitals,
        "parameters": length,
        "secure_seconds": secure,
        "plain_seconds": plain,
        "secure_over_plain": secure / plain,
        "secure_over_training": secure / training,
        "masking_seconds": masking,
        "mask_bound_seconds": bound,
        "masking_over_bound": masking / bound,
        "secure_bytes_received": channel.bytes_received(),
        "secure_bytes_sent": channel.bytes_sent(),
        "plain_bytes_received": plain_bytes,
        "bytes_ratio": channel.bytes_received() / plain_bytes,
    }


def cnn_round_shares(*, n_hospitals: int, rounds: int, seed: int) -> dict[str, float]:
    """Time rounds of the tutorial CNN with plain and with secure aggregation.

    The synthetic data (3000 images, 28 px) is split by lesion and dealt to
    `n_hospitals` IID hospitals. Each run times its aggregation step; the rest
    of a round is local training and the hospitals' validation.
    """
    data = load_dataset("synthetic", side=28, seed=seed, n_images=3000)
    split = split_by_lesion(
        data.labels, data.lesion_ids, fractions=(0.7, 0.15, 0.15), seed=seed
    )
    partition = partition_iid(
        data.labels, n_hospitals, groups=data.lesion_ids, seed=seed
    )
    hospitals = make_hospitals(data, partition, split)
    histogram = np.sum([h.label_histogram for h in hospitals], axis=0)
    options = {"class_weights": class_weights(histogram), "momentum": 0.9}
    max_weight = max(h.n_samples for h in hospitals)

    def timed_run(aggregate: Callable) -> tuple[float, float]:
        spent = []

        def timed_aggregate(global_state, updates):
            start = time.perf_counter()
            new_state = aggregate(global_state, updates)
            spent.append(time.perf_counter() - start)
            return new_state

        torch.manual_seed(seed)
        model = SkinLesionCNN(width=16, side=28)
        start = time.perf_counter()
        run_federated(
            model,
            hospitals,
            rounds=rounds,
            lr=cosine_lr(0.01, rounds),
            seed=seed,
            step_options=options,
            aggregate=timed_aggregate,
            max_update_norm=MAX_UPDATE_NORM,
            max_weight=max_weight,
            progress=False,
        )
        return (time.perf_counter() - start) / rounds, sum(spent) / rounds

    plain_round, plain_aggregation = timed_run(fedavg)
    secure = SecureAggregator(max_update_norm=MAX_UPDATE_NORM, max_weight=max_weight)
    secure_round, secure_aggregation = timed_run(secure)
    return {
        "hospitals": n_hospitals,
        "parameters": sum(
            v.numel() for v in SkinLesionCNN(width=16).state_dict().values()
        ),
        "plain_round_seconds": plain_round,
        "secure_round_seconds": secure_round,
        "plain_aggregation_seconds": plain_aggregation,
        "secure_aggregation_seconds": secure_aggregation,
        "local_training_seconds_per_round": plain_round - plain_aggregation,
        "secure_share_of_round": secure_aggregation / secure_round,
    }


def print_figures(figures: dict[str, Any]) -> None:
    """Print the figures as plain-text tables."""
    prg = figures["prg"]
    print(
        f"PRG (ChaCha20): {prg['elements_per_second'] / 1e6:.1f} M ring elements/s, "
        f"{prg['megabytes_per_second']:.0f} MB/s"
    )
    cnn = figures["cnn"]
    print(
        f"\nTutorial CNN ({cnn['parameters']} parameters), {cnn['hospitals']} "
        f"hospitals: round {cnn['plain_round_seconds']:.2f} s plain, "
        f"{cnn['secure_round_seconds']:.2f} s secure; aggregation "
        f"{cnn['plain_aggregation_seconds'] * 1e3:.1f} ms plain, "
        f"{cnn['secure_aggregation_seconds'] * 1e3:.1f} ms secure = "
        f"{cnn['secure_share_of_round']:.1%} of the secure round (target <= 10%)"
    )
    print(
        f"Reference local training per round: {figures['local_training_seconds']:.2f} s"
    )
    header = (
        f"{'hospitals':>9} {'params':>9} {'secure s':>9} {'x plain':>8} "
        f"{'x train':>8} {'mask s':>8} {'x bound':>8} {'MB up':>8} {'MB down':>8} "
        f"{'x bytes':>8}"
    )
    for title, rows in [
        ("by number of hospitals", figures["by_hospitals"]),
        ("by model size", figures["by_model_size"]),
    ]:
        print(
            f"\nSecure aggregation per round, {title}: x plain and x train are "
            "ratios of the round's time, x bound of the masking time (target <= 2)"
        )
        print(header)
        for row in rows:
            print(
                f"{row['hospitals']:>9} {row['parameters']:>9} "
                f"{row['secure_seconds']:>9.3f} {row['secure_over_plain']:>8.0f} "
                f"{row['secure_over_training']:>8.3f} {row['masking_seconds']:>8.3f} "
                f"{row['masking_over_bound']:>8.2f} "
                f"{row['secure_bytes_received'] / 1e6:>8.2f} "
                f"{row['secure_bytes_sent'] / 1e6:>8.2f} {row['bytes_ratio']:>8.2f}"
            )


def _best_time(function: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, one repeat"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("default")
    if args.quick:
        figures = benchmark_figures(
            hospital_counts=(3, 10),
            model_sizes=(10_000, 100_000),
            size_for_counts=10_000,
            cnn_rounds=1,
            repeats=1,
        )
    else:
        figures = benchmark_figures()
    print_figures(figures)


if __name__ == "__main__":
    main()
