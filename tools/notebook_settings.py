"""Find, read and replace the UPPER_CASE settings of a notebook's settings cell.

The settings cell is the first code cell that assigns `DATASET` at top level.
Its top-level assignments to UPPER_CASE names are the settings. Values are
replaced in the source text, found with `ast`, so comments and layout stay.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Mapping

import nbformat

SETTING_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
DATASET_SETTING = "DATASET"


def _top_level_settings(source: str) -> dict[str, ast.expr]:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics and shell escapes are not Python
        return {}

    settings = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if node.value is None or not isinstance(target, ast.Name):
                    continue
                if SETTING_NAME.fullmatch(target.id):
                    settings[target.id] = node.value
    return settings


def find_settings_cell(notebook: nbformat.NotebookNode) -> int | None:
    """Return the index of the first code cell that assigns DATASET, or None."""
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if DATASET_SETTING in _top_level_settings(cell.source):
            return index
    return None


def read_settings(notebook: nbformat.NotebookNode, *, name: str = "") -> dict[str, str]:
    """Return the settings cell's UPPER_CASE names with their value as written.

    Raises:
        ValueError: if the notebook has no settings cell. The message calls the
            notebook `name`.
    """
    index = _settings_cell_index(notebook, name)
    source = notebook.cells[index].source
    settings = _top_level_settings(source)
    return {
        setting: ast.get_source_segment(source, value)
        for setting, value in settings.items()
    }


def replace_settings(source: str, values: Mapping[str, object]) -> str:
    """Return `source` with the value of each named top-level setting replaced.

    Each new value is written as its `repr`, so it must be a Python literal
    (str, int, float, bool, None, or tuples, lists and dicts of them). Comments
    and the other lines stay as they are.

    Raises:
        ValueError: if a name is not assigned at top level in `source`, or a value
            does not read back as the same literal.
    """
    settings = _top_level_settings(source)
    missing = sorted(set(values) - set(settings))
    if missing:
        raise ValueError(
            f"setting(s) {', '.join(missing)} not found. The settings cell assigns "
            f"{', '.join(sorted(settings)) or 'nothing'}."
        )

    # Offsets from ast count UTF-8 bytes within a line.
    lines = source.encode().splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    encoded = source.encode()

    spans: dict[tuple[int, int], tuple[str, bytes]] = {}
    for name, value in values.items():
        literal = repr(value)
        if _literal_or_none(literal) != value:
            raise ValueError(
                f"{name}={value!r} is not a Python literal. Use str, int, float, "
                "bool, None, or tuples, lists and dicts of them."
            )
        node = settings[name]
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        if (begin, end) in spans:  # A = B = 1 gives both names one value
            raise ValueError(
                f"{spans[begin, end][0]} and {name} share one assignment. Give each "
                "its own line in the settings cell."
            )
        spans[begin, end] = (name, literal.encode())

    for (begin, end), (_, literal) in sorted(spans.items(), reverse=True):
        encoded = encoded[:begin] + literal + encoded[end:]
    return encoded.decode()


def _literal_or_none(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def _settings_cell_index(notebook: nbformat.NotebookNode, name: str = "") -> int:
    index = find_settings_cell(notebook)
    if index is None:
        raise ValueError(
            f"{name or 'the notebook'} has no settings cell: no code cell assigns "
            f"{DATASET_SETTING} at top level, so its data set cannot be chosen. Add "
            f'{DATASET_SETTING} = "synthetic" to the cell of UPPER_CASE settings.'
        )
    return index


def with_settings(
    notebook: nbformat.NotebookNode, values: Mapping[str, object], *, name: str = ""
) -> nbformat.NotebookNode:
    """Return a copy of `notebook` whose settings cell has `values` written in.

    The settings cell gets a first comment line that names the replaced
    settings, so the executed copy shows that it differs from the committed one.

    Raises:
        ValueError: if the notebook has no settings cell or lacks a named setting.
    """
    result = copy.deepcopy(notebook)
    index = _settings_cell_index(result, name)
    cell = result.cells[index]
    try:
        source = replace_settings(cell.source, values)
    except ValueError as error:
        raise ValueError(f"{name or 'the notebook'}: {error}") from error

    if values:
        names = ", ".join(values)
        source = f"# Replaced for this run: {names}\n{source}"
    cell.source = source
    return result


def parse_assignment(text: str) -> tuple[str, object]:
    """Parse a command-line `NAME=VALUE` whose VALUE is a Python literal.

    Raises:
        ValueError: if NAME is not UPPER_CASE or VALUE is not a Python literal.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not SETTING_NAME.fullmatch(name):
        raise ValueError(
            f"--set {text!r} is invalid. Expected NAME=VALUE with an UPPER_CASE "
            "NAME, for example --set SEED=1."
        )
    try:
        return name, ast.literal_eval(value.strip())
    except (ValueError, SyntaxError) as error:
        raise ValueError(
            f"--set {text!r}: {value!r} is not a Python literal. Quote text, "
            "for example --set NAME='\"text\"', and write numbers as 1 or 0.5."
        ) from error
