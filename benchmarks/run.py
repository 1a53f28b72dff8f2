"""Time the notebooks and report notebook 3's headline metrics over three seeds.

Each notebook runs headless in a fresh kernel, on a copy: the committed notebooks
are never written. Peak memory is the largest resident set size of this
process's children (the kernel), sampled every 0.1 s, so a shorter spike can be
missed. The timings end with the total, the largest notebook peak (the series'
peak memory) and the total against the series' run-time budget of 17 minutes.
The seed runs re-execute notebook 3 with its SEED setting replaced, which also
changes the synthetic data and the split, and read its `results` table.

Usage:
    .venv/bin/python benchmarks/run.py             # timings, then seeds 0, 1, 2
    .venv/bin/python benchmarks/run.py --seeds 0   # one seed only
    .venv/bin/python benchmarks/run.py --no-seeds  # timings only
    .venv/bin/python benchmarks/run.py --no-seeds --notebooks 01 03  # two only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import nbformat
import pandas as pd
import psutil
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
# The script runs by its path, so the repository root, where tools/ lives, is not
# on the import path by itself.
sys.path.insert(0, str(ROOT))
from tools.notebook_files import select_notebooks  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
FEDERATED_NOTEBOOK = NOTEBOOKS / "03_federated_averaging.ipynb"
# Run-time budget of the whole series on one thread, the sum of the notebooks' own.
SERIES_BUDGET_SECONDS = 17 * 60


class PeakMemory:
    """Sample the summed RSS of this process's children in a background thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(self.interval)


def execute(notebook: nbformat.NotebookNode) -> tuple[float, int]:
    """Run a notebook in a fresh kernel; return seconds and peak bytes."""
    client = NotebookClient(
        notebook,
        timeout=1800,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    with PeakMemory() as memory:
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    return seconds, memory.peak


def with_seed(notebook: nbformat.NotebookNode, seed: int) -> nbformat.NotebookNode:
    """Copy a notebook with its SEED setting replaced and a cell that prints results."""
    copy = nbformat.from_dict(json.loads(json.dumps(notebook)))
    settings = next(
        cell
        for cell in copy.cells
        if cell.cell_type == "code" and "SEED =" in cell.source
    )
    settings.source, count = re.subn(
        r"^SEED = \d+", f"SEED = {seed}", settings.source, flags=re.MULTILINE
    )
    if count != 1:
        raise ValueError(
            f"{FEDERATED_NOTEBOOK.name}: expected one 'SEED = <int>' line."
        )
    copy.cells.append(nbformat.v4.new_code_cell("print(results.to_json())"))
    return copy


def results_of(notebook: nbformat.NotebookNode) -> pd.DataFrame:
    """Read the JSON results table that the appended last cell printed."""
    text = "".join(
        output.get("text", "")
        for output in notebook.cells[-1].outputs
        if output.get("name") == "stdout"
    )
    return pd.DataFrame(json.loads(text))


def headline(results: pd.DataFrame) -> dict[str, float]:
    """Pick the pooled, local-only and federated scores from notebook 3's table."""
    balanced = results["balanced accuracy"]
    local = balanced[balanced.index.str.startswith("local only")]
    federated = balanced[balanced.index.str.startswith(("FedAvg", "FedProx"))]
    pooled = balanced["pooled"]
    return {
        "pooled": pooled,
        "best local only": local.max(),
        "smallest-site local only / pooled": local.min() / pooled,
        "plain FedAvg / pooled": balanced["FedAvg"] / pooled,
        "best federated / pooled": federated.max() / pooled,
        "best federated - best local only": federated.max() - local.max(),
    }


def time_notebooks(paths: list[Path], n_series: int) -> None:
    """Execute each notebook once and print its wall time, peak memory and totals.

    Args:
        paths: the notebooks to time, in series order.
        n_series: the number of notebooks in the series, to say when the total
            covers only some of them.
    """
    rows = []
    for path in paths:
        seconds, peak = execute(nbformat.read(path, as_version=4))
        rows.append(
            {"notebook": path.name, "seconds": seconds, "peak MiB": peak / 2**20}
        )
        print(f"{path.name}: {seconds:.0f} s, peak {peak / 2**20:.0f} MiB", flush=True)
    timings = pd.DataFrame(rows).set_index("notebook")
    print(timings.round(0).to_string())

    total = timings["seconds"].sum()
    peaks = timings["peak MiB"]
    count = f"{len(paths)} notebook" + ("" if len(paths) == 1 else "s")
    print(f"total of {count}: {total:.0f} s ({total / 60:.1f} min)")
    print(f"largest peak memory: {peaks.max():.0f} MiB, in {peaks.idxmax()}")

    budget = SERIES_BUDGET_SECONDS
    verdict = "within" if total <= budget else "over"
    scope = "" if len(paths) == n_series else f" ({len(paths)} of {n_series} timed)"
    print(
        f"{verdict} the series budget of {budget} s ({budget // 60} min): "
        f"{total / budget:.0%} of it{scope}"
    )


def seeded_metrics(seeds: list[int]) -> None:
    """Rerun notebook 3 for each seed and print its headline metrics' mean and sd."""
    template = nbformat.read(FEDERATED_NOTEBOOK, as_version=4)
    per_seed = {}
    for seed in seeds:
        notebook = with_seed(template, seed)
        execute(notebook)
        per_seed[seed] = headline(results_of(notebook))
        print(
            f"seed {seed}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in per_seed[seed].items()),
            flush=True,
        )
    table = pd.DataFrame(per_seed)
    summary = pd.DataFrame({"mean": table.mean(axis=1)})
    if len(per_seed) > 1:  # a spread needs two seeds at least
        summary["sd"] = table.std(axis=1, ddof=1)
    print(f"\nheadline metrics over seeds {seeds} (pooled test set):")
    print(summary.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-seeds", action="store_true", help="timings only")
    parser.add_argument("--no-timings", action="store_true", help="seeded metrics only")
    parser.add_argument(
        "--notebooks",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="time only these notebooks: file names, stems or number prefixes (01)",
    )
    arguments = parser.parse_args()
    if arguments.no_timings and arguments.notebooks:
        parser.error("--notebooks selects notebooks to time; drop it or --no-timings.")
    series = sorted(NOTEBOOKS.glob("*.ipynb"))
    try:
        paths = select_notebooks(series, arguments.notebooks)
    except ValueError as error:
        parser.error(str(error))
    os.environ["CI"] = "true"  # quiet progress bars, as in CI

    print(
        f"machine: {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    )
    if not arguments.no_timings:
        time_notebooks(paths, n_series=len(series))
    if not arguments.no_seeds:
        seeded_metrics(arguments.seeds)


if __name__ == "__main__":
    main()
