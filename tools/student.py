"""Write the student version of the series: the notebooks without their solutions.

Every notebook in the source folder is copied into the output folder with the
cells tagged `solution` removed (nbconvert's TagRemovePreprocessor) and every
output cleared (its ClearOutputPreprocessor), so learners run each cell
themselves and see no result before they have produced it. Each solution code
cell leaves an empty answer cell, tagged `answer`, in its place, for the
learner's own code. The tag is matched case-insensitively, so `Solution` and
`SOLUTION` cells are removed too. Execution counts and per-cell
execution timings go as well. Every notebook is read and checked before the
first copy is written, so one invalid notebook leaves the output folder as it
was. The committed notebooks are only read.

Usage, from the repository root:
    .venv/bin/python -m tools.student                       # build/student/
    .venv/bin/python -m tools.student --output /tmp/course  # another folder
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbconvert.exporters import NotebookExporter
from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

from tools.notebook_files import (
    BUILD_DIR,
    NOTEBOOKS_DIR,
    find_notebooks,
    prepare_output_folder,
    read_notebook,
)

SOLUTION_TAG = "solution"
ANSWER_TAG = "answer"
ANSWER_SOURCE = (
    "# Your answer: write it here, then call the checker the exercise names."
)
DEFAULT_OUTPUT = BUILD_DIR / "student"


@dataclass(frozen=True)
class StudentCopy:
    """One notebook of the student version and what was taken out of it."""

    source: Path
    output: Path
    n_cells: int
    n_solutions_removed: int
    n_answer_cells: int


def is_solution(cell: nbformat.NotebookNode) -> bool:
    """Return whether the cell has the `solution` tag, in any letter case."""
    tags = cell.get("metadata", {}).get("tags", [])
    if isinstance(tags, str):
        tags = [tags]
    return any(str(tag).casefold() == SOLUTION_TAG for tag in tags)


def make_student_notebook(
    notebook: nbformat.NotebookNode,
) -> tuple[nbformat.NotebookNode, int]:
    """Return a copy of `notebook` without solution cells or outputs.

    A cell is a solution if one of its tags is `solution` in any letter case.
    An empty answer cell takes the place of each solution code cell.

    Returns:
        The student notebook and the number of solution cells removed.
    """
    marked = deepcopy(notebook)
    cells = []
    for cell in marked.cells:
        if is_solution(cell):
            # One spelling of the tag, for nbconvert's exact match.
            cell.metadata["tags"] = [SOLUTION_TAG]
            if cell.cell_type == "code":
                answer = nbformat.v4.new_code_cell(ANSWER_SOURCE)
                answer.metadata["tags"] = [ANSWER_TAG]
                cells.append(answer)
        cells.append(cell)
    marked.cells = cells

    exporter = NotebookExporter()
    exporter.register_preprocessor(
        TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG}, enabled=True)
    )
    exporter.register_preprocessor(
        ClearOutputPreprocessor(
            remove_metadata_fields={"collapsed", "scrolled", "execution"},
            enabled=True,
        )
    )

    body, _ = exporter.from_notebook_node(marked)
    student = nbformat.reads(body, as_version=4)
    return student, sum(is_solution(cell) for cell in notebook.cells)


def write_student_version(
    source: str | os.PathLike = NOTEBOOKS_DIR,
    output: str | os.PathLike = DEFAULT_OUTPUT,
) -> list[StudentCopy]:
    """Write the student copy of every notebook in `source` into `output`.

    Every notebook is read, checked and converted before the output folder is
    created, so an invalid notebook stops the run with nothing written. Copies
    of the same name in `output` are replaced. Other files there are left as
    they are, so a notebook removed from the series keeps its old copy until the
    folder is deleted.

    Raises:
        FileNotFoundError: if `source` is missing or contains no notebook.
        NotADirectoryError: if `source` is a file, or `output` cannot be
            created because it or a parent is a file.
        ValueError: if a notebook is not valid JSON or not a valid notebook (the
            message names the file), or `output` is `source` or lies inside it.
        PermissionError: if `output` cannot be written.
    """
    notebooks = find_notebooks(source)
    students = []
    for path in notebooks:
        student, removed = make_student_notebook(read_notebook(path))
        try:
            nbformat.validate(student)
        except nbformat.ValidationError as error:
            raise ValueError(
                f"the student copy of {path} is not a valid notebook "
                f"({str(error).splitlines()[0]})."
            ) from error
        students.append((path, student, removed))

    output = prepare_output_folder(output, source=source)
    copies = []
    for path, student, removed in students:
        target = output / path.name
        nbformat.write(student, target)
        answers = sum(
            ANSWER_TAG in cell.metadata.get("tags", []) for cell in student.cells
        )
        copies.append(StudentCopy(path, target, len(student.cells), removed, answers))
    return copies


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0, or 2 on an error)."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.student",
        description=(
            "Copy the notebooks without the cells tagged 'solution' (in any "
            "letter case) and with every output cleared."
        ),
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=NOTEBOOKS_DIR,
        help="folder of the notebooks to copy (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="folder the student copies are written to (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    try:
        copies = write_student_version(args.source, args.output)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    for copy in copies:
        print(
            f"{copy.output.name}: {copy.n_solutions_removed} solution cell(s) "
            f"removed, {copy.n_answer_cells} answer cell(s) added, "
            f"{copy.n_cells} cells in all, outputs cleared"
        )
    print(f"student version of {len(copies)} notebook(s) in {copies[0].output.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
