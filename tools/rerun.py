"""Rerun the series headlessly on a chosen data set, into a build folder.

Each chosen notebook is read, its settings cell gets the requested values, and
the copy runs top to bottom in a fresh kernel (nbclient). The executed copies go
to the output folder (default `build/rerun-<dataset>/`). The committed notebooks
are only read. A notebook that fails is saved too, up to the failing cell, and
the run goes on with the next one. The exit status is 1 if any notebook failed.

The settings cell is the first code cell that assigns `DATASET` at top level.
Its UPPER_CASE assignments are the settings that can be replaced: `--dataset`
sets `DATASET`, `--data-root` sets `DATA_ROOT` (the folder or file that
`load_dataset` reads), and `--set NAME=VALUE` sets any other one. A notebook
without a settings cell, or without `DATA_ROOT` when `--data-root` is given,
stops the run before anything executes. A `--set` name must exist in at least
one chosen notebook and is applied to those that have it.

Kernels start with the notebook folder as working directory, as under nbval,
and with CI=true unless CI is already set, which turns progress bars off.

Usage, from the repository root:
    .venv/bin/python -m tools.rerun --dataset ham10000 --data-root ~/HAM10000
    .venv/bin/python -m tools.rerun 01 02 --dataset synthetic --set N_IMAGES=500
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from helpers.datasets import DATASET_NAMES
from tools.notebook_files import (
    BUILD_DIR,
    NOTEBOOKS_DIR,
    find_notebooks,
    prepare_output_folder,
    read_notebook,
    select_notebooks,
)
from tools.notebook_settings import (
    DATASET_SETTING,
    parse_assignment,
    read_settings,
    with_settings,
)

DATA_ROOT_SETTING = "DATA_ROOT"
DEFAULT_CELL_TIMEOUT = 1800


@dataclass(frozen=True)
class RunResult:
    """Outcome of one notebook's rerun: its copy, run time and error, if any."""

    notebook: str
    output: Path
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def execute_notebook(
    notebook: nbformat.NotebookNode,
    *,
    working_dir: str | os.PathLike,
    timeout: int = DEFAULT_CELL_TIMEOUT,
) -> tuple[float, str | None]:
    """Run `notebook` in place in a fresh kernel, stopping at the first error.

    The kernel gets this process's environment with CI=true unless CI is set,
    which turns the helpers' progress bars off. Every output is cleared first,
    so after a failure the cells below the failing one show no stale results
    from the committed run.

    Returns:
        The seconds it ran, and None, or a one-line description of the failure.

    Raises:
        ValueError: if `timeout` is not a positive int.
    """
    check_timeout(timeout)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None

    kernel = notebook.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name=kernel,
        resources={"metadata": {"path": str(working_dir)}},
    )

    start = time.perf_counter()
    try:
        client.execute(env={**os.environ, "CI": os.environ.get("CI", "true")})
    except CellExecutionError as error:
        return time.perf_counter() - start, _describe_cell_error(notebook, error)
    except CellTimeoutError:
        return time.perf_counter() - start, f"a cell ran longer than {timeout} s"
    except DeadKernelError as error:
        return time.perf_counter() - start, f"the kernel died ({error})"
    return time.perf_counter() - start, None


def _describe_cell_error(
    notebook: nbformat.NotebookNode, error: CellExecutionError
) -> str:
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                where = f"cell {index + 1} of {len(notebook.cells)}"
                return f"{where}: {output.ename}: {output.evalue}"
    return f"{error.ename}: {error.evalue}"


def check_timeout(timeout: int) -> int:
    """Check the seconds one cell may run and return them.

    Raises:
        ValueError: if `timeout` is not an int >= 1.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ValueError(
            "timeout must be a positive whole number of seconds per cell "
            f"(--timeout on the command line), got {timeout!r}."
        )
    return timeout


def check_dataset(name: str) -> str:
    """Check a data-set name and return it in lower case, as load_dataset takes it.

    Raises:
        ValueError: if load_dataset does not know the name.
    """
    key = name.lower()
    if key not in DATASET_NAMES:
        raise ValueError(
            f"unknown data set {name!r}. Expected one of {', '.join(DATASET_NAMES)}."
        )
    return key


def prepare_runs(
    paths: Sequence[Path],
    *,
    dataset: str,
    data_root: str | os.PathLike | None = None,
    extra: Mapping[str, object] | None = None,
) -> list[tuple[Path, nbformat.NotebookNode]]:
    """Read each notebook and write the requested settings into a copy of it.

    `dataset` and `data_root` must be settings of every notebook. Each `extra`
    setting must be one of at least one notebook, and is applied where it is.

    Raises:
        ValueError: on an unknown data set, a notebook without a settings cell or
            without DATA_ROOT when `data_root` is given, an `extra` name that no
            notebook has, or a clash between `extra` and the data settings. Also
            on a file that is not a valid notebook, which the message names.
        FileNotFoundError: if `data_root` does not exist.
    """
    extra = dict(extra or {})
    required: dict[str, object] = {DATASET_SETTING: check_dataset(dataset)}
    if data_root is not None:
        root = Path(data_root).expanduser().resolve()
        if not root.exists():
            raise FileNotFoundError(
                f"data root {root} not found. Pass the HAM10000 folder or the "
                "DermaMNIST file to read."
            )
        required[DATA_ROOT_SETTING] = str(root)

    clash = sorted(set(extra) & {DATASET_SETTING, DATA_ROOT_SETTING})
    if clash:
        raise ValueError(
            f"set {', '.join(clash)} with --dataset and --data-root, not --set."
        )

    notebooks = [read_notebook(path) for path in paths]
    settings = [
        read_settings(notebook, name=path.name)
        for path, notebook in zip(paths, notebooks, strict=True)
    ]
    if data_root is not None:
        lacking = [
            path.name
            for path, names in zip(paths, settings, strict=True)
            if DATA_ROOT_SETTING not in names
        ]
        if lacking:
            raise ValueError(
                f"no {DATA_ROOT_SETTING} setting in {', '.join(lacking)}, so "
                "--data-root cannot reach load_dataset there. Add "
                f"{DATA_ROOT_SETTING} = None to the settings cell and pass "
                f"root={DATA_ROOT_SETTING} to load_dataset, or run without "
                "--data-root to read the default location under data/."
            )

    unused = sorted(name for name in extra if not any(name in s for s in settings))
    if unused:
        raise ValueError(
            f"setting(s) {', '.join(unused)} appear in none of "
            f"{', '.join(path.name for path in paths)}. Check the spelling in the "
            "notebooks' settings cells."
        )

    prepared = []
    for path, notebook, names in zip(paths, notebooks, settings, strict=True):
        values = dict(required)
        values.update({name: value for name, value in extra.items() if name in names})
        prepared.append((path, with_settings(notebook, values, name=path.name)))
    return prepared


def rerun(
    names: Sequence[str] = (),
    *,
    dataset: str,
    data_root: str | os.PathLike | None = None,
    extra: Mapping[str, object] | None = None,
    source: str | os.PathLike = NOTEBOOKS_DIR,
    output: str | os.PathLike | None = None,
    timeout: int = DEFAULT_CELL_TIMEOUT,
    report: Callable[[str], object] = print,
) -> list[RunResult]:
    """Rerun the chosen notebooks of `source` with the given settings.

    Every notebook is prepared before the first one runs, so a bad setting stops
    the run at once. `report` receives one line per notebook as it finishes.

    Args:
        names: notebooks to run (file name, stem or number prefix); empty = all.
        dataset: the DATASET setting ("synthetic", "ham10000" or "dermamnist").
        data_root: the DATA_ROOT setting, or None to keep each notebook's own.
        extra: further settings, NAME -> literal value.
        source: folder of the notebooks.
        output: folder of the executed copies (default build/rerun-<dataset>).
        timeout: seconds one cell may run, an int >= 1.
        report: callable that prints a line.

    Raises:
        ValueError, FileNotFoundError, NotADirectoryError, PermissionError: on
            bad settings, a timeout < 1, invalid notebooks or bad folders,
            before any notebook runs.
    """
    check_timeout(timeout)
    paths = select_notebooks(find_notebooks(source), names)
    prepared = prepare_runs(paths, dataset=dataset, data_root=data_root, extra=extra)
    if output is None:
        output = BUILD_DIR / f"rerun-{check_dataset(dataset)}"
    output = prepare_output_folder(output, source=source)

    results = []
    for path, notebook in prepared:
        seconds, error = execute_notebook(
            notebook, working_dir=path.parent, timeout=timeout
        )
        target = output / path.name
        nbformat.write(notebook, target)

        result = RunResult(path.name, target, seconds, error)
        status = "ok" if result.ok else "FAILED"
        detail = f": {error}" if error else ""
        report(f"{status:<6} {path.name:<40} {seconds:7.1f} s{detail}")
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return 0, 1 if a notebook failed, 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.rerun",
        description=(
            "Execute the notebooks on a chosen data set into a build folder, "
            "leaving the committed notebooks untouched."
        ),
    )
    parser.add_argument(
        "notebooks",
        nargs="*",
        metavar="NOTEBOOK",
        help="notebooks to run: file name, stem or number prefix (default: all)",
    )
    parser.add_argument(
        "--dataset",
        default="synthetic",
        help=f"data set to load: {', '.join(DATASET_NAMES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        help="HAM10000 folder or DermaMNIST file (default: each notebook's own)",
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="replace another setting with a Python literal, e.g. SEED=1",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=NOTEBOOKS_DIR,
        help="folder of the notebooks (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="folder of the executed copies (default: build/rerun-<dataset>)",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=DEFAULT_CELL_TIMEOUT,
        help=(
            "seconds a cell may run before its notebook fails, at least 1 "
            "(default: %(default)s)"
        ),
    )
    args = parser.parse_args(argv)

    try:
        extra = dict(parse_assignment(text) for text in args.assignments)
        results = rerun(
            args.notebooks,
            dataset=args.dataset,
            data_root=args.data_root,
            extra=extra,
            source=args.source,
            output=args.output,
            timeout=args.timeout,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    failed = [result for result in results if not result.ok]
    total = sum(result.seconds for result in results)
    print(
        f"{len(results) - len(failed)} of {len(results)} notebook(s) ran in "
        f"{total:.1f} s; executed copies in {results[0].output.parent}"
    )
    if failed:
        names = ", ".join(result.notebook for result in failed)
        print(f"failed: {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
