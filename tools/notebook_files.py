"""Find and read the series' notebooks and prepare the build folders of the tools."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"
BUILD_DIR = ROOT / "build"


def find_notebooks(source: str | os.PathLike) -> list[Path]:
    """List the `.ipynb` files directly inside `source`, sorted by name.

    Raises:
        NotADirectoryError: if `source` is a file, such as one notebook.
        FileNotFoundError: if `source` does not exist or contains no notebook.
    """
    source = Path(source)
    if source.exists() and not source.is_dir():
        raise NotADirectoryError(
            f"notebook folder {source} is a file, not a folder. Pass the folder "
            f"that contains the notebooks, here {source.parent}."
        )
    if not source.is_dir():
        raise FileNotFoundError(
            f"notebook folder {source} not found. Pass the folder that contains "
            "the series' .ipynb files (by default notebooks/)."
        )

    notebooks = sorted(source.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(
            f"{source} contains no .ipynb file. Pass the folder that contains the "
            "series' notebooks (by default notebooks/)."
        )
    return notebooks


def read_notebook(path: str | os.PathLike) -> nbformat.NotebookNode:
    """Read a notebook as nbformat 4 and check it against the notebook schema.

    Raises:
        ValueError: if the file is not UTF-8 JSON or not a valid notebook. The
            message names the file.
        OSError: if the file cannot be read.
    """
    path = Path(path)
    try:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
    # nbformat raises ValueError subclasses for bad JSON and unknown versions,
    # and AttributeError or TypeError for JSON that is not an object.
    except (
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        nbformat.ValidationError,
    ) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise ValueError(
            f"{path} is not a valid notebook: {lines[0]}. Fix the file or move it "
            "out of the notebook folder."
        ) from error
    return notebook


def select_notebooks(notebooks: Sequence[Path], names: Sequence[str]) -> list[Path]:
    """Pick notebooks by file name, stem or number prefix ("01", "01_data").

    An empty `names` selects every notebook. The selection keeps the series
    order, whatever the order of `names`.

    Raises:
        ValueError: if a name matches no notebook or more than one.
    """
    if not names:
        return list(notebooks)

    chosen: set[Path] = set()
    for name in names:
        matches = [
            path
            for path in notebooks
            if name in (path.name, path.stem) or path.stem.startswith(f"{name}_")
        ]
        if len(matches) != 1:
            available = ", ".join(path.name for path in notebooks)
            found = "no notebook" if not matches else f"{len(matches)} notebooks"
            raise ValueError(
                f"notebook {name!r} matches {found}. Use a file name, a stem or a "
                f"number prefix of exactly one of: {available}."
            )
        chosen.add(matches[0])

    return [path for path in notebooks if path in chosen]


def prepare_output_folder(
    output: str | os.PathLike, *, source: str | os.PathLike
) -> Path:
    """Create the folder the tools write into and check that it is writable.

    The folder may not be `source` or lie inside it, so the committed notebooks
    are never overwritten and pytest's notebook run never collects the copies.

    Returns:
        The output folder as an absolute Path.

    Raises:
        ValueError: if `output` is `source` or lies inside it.
        NotADirectoryError: if `output` or one of its parents is a file.
        PermissionError: if the folder cannot be created or written to.
        OSError: if creating the folder fails for another reason.
    """
    output = Path(output).resolve()
    source = Path(source).resolve()
    if output == source or source in output.parents:
        raise ValueError(
            f"output folder {output} is inside the notebook folder {source}. "
            "Choose a folder outside it, for example build/."
        )

    try:
        output.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise NotADirectoryError(
            f"cannot create output folder {output} because it or one of its "
            f"parents is a file ({error.strerror}). Remove that file or choose "
            "another folder."
        ) from error
    except PermissionError as error:
        raise PermissionError(
            f"cannot create output folder {output}: permission denied. Choose a "
            "folder you can write to."
        ) from error
    except OSError as error:
        raise OSError(
            f"cannot create output folder {output}: {error.strerror}. Choose a "
            "folder you can write to."
        ) from error

    # os.access is always true for root and can miss read-only mounts, so write.
    try:
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        raise PermissionError(
            f"output folder {output} is not writable ({error.strerror}). Choose a "
            "folder you can write to."
        ) from error
    return output
