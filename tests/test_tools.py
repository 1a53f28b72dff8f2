"""Tests of the course tooling: the student version, the headless rerun, JupyterLab."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from helpers.synthetic import write_synthetic_ham10000
from tools import notebook_settings, rerun, student
from tools.notebook_files import (
    NOTEBOOKS_DIR,
    find_notebooks,
    prepare_output_folder,
    read_notebook,
    select_notebooks,
)

COMMITTED = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
# Notebook 1 draws six example images of every class, so the folder needs six
# of the rarest class, dermatofibroma (1.15% of HAM10000). 800 images give nine.
N_TEST_IMAGES = 800


def digests(paths):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


@pytest.fixture
def committed_unchanged():
    """Fail the test if it changed any committed notebook."""
    before = digests(COMMITTED)
    yield
    assert digests(COMMITTED) == before


def write_notebook(path, *sources, tags=None):
    cells = [nbformat.v4.new_code_cell(source) for source in sources]
    for index, cell_tags in (tags or {}).items():
        cells[index].metadata["tags"] = cell_tags
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, path)
    return path


SETTINGS = 'DATASET = "synthetic"  # the data switch\nDATA_ROOT = None\nSEED = 0'


def write_invalid_notebook(path):
    path.write_text("{not json")
    return path


# The series' notebook files.


def test_find_notebooks_lists_series():
    assert find_notebooks(NOTEBOOKS_DIR) == COMMITTED
    assert len(COMMITTED) >= 3


def test_find_notebooks_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        find_notebooks(tmp_path / "absent")


def test_find_notebooks_source_is_file(tmp_path):
    notebook = write_notebook(tmp_path / "01_a.ipynb", "x = 1")
    with pytest.raises(NotADirectoryError, match="01_a.ipynb is a file, not a folder"):
        find_notebooks(notebook)


def test_read_notebook_names_invalid_file(tmp_path):
    not_json = write_invalid_notebook(tmp_path / "01_a.ipynb")
    json_list = tmp_path / "02_b.ipynb"
    json_list.write_text("[]")
    bad_tags = write_notebook(tmp_path / "03_c.ipynb", "x = 1")
    content = json.loads(bad_tags.read_text())
    content["cells"][0]["metadata"]["tags"] = "solution"
    bad_tags.write_text(json.dumps(content))

    with pytest.raises(ValueError, match="01_a.ipynb is not a valid notebook: .*JSON"):
        read_notebook(not_json)
    with pytest.raises(ValueError, match="02_b.ipynb is not a valid notebook"):
        read_notebook(json_list)
    with pytest.raises(ValueError, match="03_c.ipynb is not a valid notebook: .*array"):
        read_notebook(bad_tags)
    assert read_notebook(COMMITTED[0]).nbformat == 4


def test_find_notebooks_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a notebook")
    with pytest.raises(FileNotFoundError, match="contains no .ipynb"):
        find_notebooks(tmp_path)


def test_select_notebooks_by_prefix_stem_name(tmp_path):
    paths = [tmp_path / name for name in ("01_a.ipynb", "02_b.ipynb", "10_c.ipynb")]
    assert select_notebooks(paths, []) == paths
    assert select_notebooks(paths, ["10", "01"]) == [paths[0], paths[2]]
    assert select_notebooks(paths, ["02_b"]) == [paths[1]]
    assert select_notebooks(paths, ["10_c.ipynb"]) == [paths[2]]


def test_select_notebooks_unknown_name(tmp_path):
    paths = [tmp_path / "01_a.ipynb", tmp_path / "02_b.ipynb"]
    with pytest.raises(ValueError, match="'03' matches no notebook.*01_a.ipynb"):
        select_notebooks(paths, ["03"])
    with pytest.raises(ValueError, match="'0' matches no notebook"):
        select_notebooks(paths, ["0"])


def test_prepare_output_folder_creates_it(tmp_path):
    output = prepare_output_folder(tmp_path / "build" / "x", source=NOTEBOOKS_DIR)
    assert output == (tmp_path / "build" / "x").resolve()
    assert output.is_dir()
    assert list(output.iterdir()) == []


def test_prepare_output_folder_inside_source(tmp_path):
    with pytest.raises(ValueError, match="inside the notebook folder"):
        prepare_output_folder(tmp_path, source=tmp_path)
    with pytest.raises(ValueError, match="inside the notebook folder"):
        prepare_output_folder(tmp_path / "copies", source=tmp_path)
    assert not (tmp_path / "copies").exists()


def test_prepare_output_folder_file_in_way(tmp_path):
    blocker = tmp_path / "build"
    blocker.write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        prepare_output_folder(blocker, source=NOTEBOOKS_DIR)
    with pytest.raises(NotADirectoryError, match="is a file"):
        prepare_output_folder(blocker / "student", source=NOTEBOOKS_DIR)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_prepare_output_folder_read_only(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            prepare_output_folder(locked, source=NOTEBOOKS_DIR)
        with pytest.raises(PermissionError, match="permission denied"):
            prepare_output_folder(locked / "student", source=NOTEBOOKS_DIR)
    finally:
        locked.chmod(0o700)


# The student version.


def test_make_student_notebook_removes_solutions():
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("Exercise: compute 6 * 7."),
            nbformat.v4.new_code_cell("answer = None", execution_count=1),
            nbformat.v4.new_code_cell("answer = 6 * 7", execution_count=2),
            nbformat.v4.new_markdown_cell("The answer is 42."),
        ]
    )
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", text="None\n")]
    notebook.cells[1].metadata["execution"] = {"iopub.status.busy": "2026-01-01"}
    notebook.cells[1].metadata["tags"] = ["nbval-check-output"]
    notebook.cells[2].metadata["tags"] = ["solution"]
    notebook.cells[3].metadata["tags"] = ["hint", "solution"]

    copy, removed = student.make_student_notebook(notebook)

    assert removed == 2
    assert [cell.source for cell in copy.cells] == [
        "Exercise: compute 6 * 7.",
        "answer = None",
        student.ANSWER_SOURCE,
    ]
    assert copy.cells[2].metadata["tags"] == [student.ANSWER_TAG]
    assert copy.cells[2].outputs == []
    assert copy.cells[1].outputs == []
    assert copy.cells[1].execution_count is None
    assert dict(copy.cells[1].metadata) == {"tags": ["nbval-check-output"]}
    assert len(notebook.cells) == 4
    assert notebook.cells[1].outputs[0].text == "None\n"


def test_make_student_notebook_tag_any_case():
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(f"x = {index}") for index in range(5)]
    )
    for index, tag in enumerate(["Solution", "SOLUTION", "solutions", "sol"], 1):
        notebook.cells[index].metadata["tags"] = [tag]

    copy, removed = student.make_student_notebook(notebook)

    answer = student.ANSWER_SOURCE
    assert removed == 2
    assert [cell.source for cell in copy.cells] == [
        "x = 0",
        answer,
        answer,
        "x = 3",
        "x = 4",
    ]


def test_student_version_of_series(tmp_path, committed_unchanged):
    output = tmp_path / "student"
    copies = student.write_student_version(NOTEBOOKS_DIR, output)

    assert [copy.source for copy in copies] == COMMITTED
    assert sorted(path.name for path in output.iterdir()) == [
        path.name for path in COMMITTED
    ]
    for copy in copies:
        original = nbformat.read(copy.source, as_version=4)
        expected, n_solutions = [], 0
        for cell in original.cells:
            if "solution" not in [t.lower() for t in cell.metadata.get("tags", [])]:
                expected.append(cell.source)
                continue
            n_solutions += 1
            if cell.cell_type == "code":
                expected.append(student.ANSWER_SOURCE)
        result = nbformat.read(copy.output, as_version=4)
        nbformat.validate(result)
        assert [cell.source for cell in result.cells] == expected, copy.output.name
        assert copy.n_cells == len(expected)
        assert copy.n_solutions_removed == n_solutions
        assert copy.n_solutions_removed > 0, f"{copy.output.name} has no solution"
        assert copy.n_answer_cells == expected.count(student.ANSWER_SOURCE)
        code = [cell for cell in result.cells if cell.cell_type == "code"]
        assert all(cell.outputs == [] for cell in code), copy.output.name
        assert all(cell.execution_count is None for cell in code), copy.output.name
        assert result.metadata.kernelspec == original.metadata.kernelspec


def test_student_main_reports_counts(tmp_path, capsys):
    source = tmp_path / "notebooks"
    source.mkdir()
    write_notebook(source / "01_a.ipynb", "x = 1", "x = 2", tags={1: ["solution"]})
    write_notebook(source / "02_b.ipynb", "y = 1")

    status = student.main(["--source", str(source), "--output", str(tmp_path / "s")])

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines[0] == (
        "01_a.ipynb: 1 solution cell(s) removed, 1 answer cell(s) added, 2 cells in "
        "all, outputs cleared"
    )
    assert lines[1].startswith("02_b.ipynb: 0 solution cell(s) removed")
    assert lines[2] == f"student version of 2 notebook(s) in {tmp_path / 's'}"


def test_student_main_missing_source(tmp_path, capsys):
    status = student.main(["--source", str(tmp_path / "absent")])
    assert status == 2
    assert "error: notebook folder" in capsys.readouterr().err


def test_student_invalid_notebook_writes_nothing(tmp_path):
    source = tmp_path / "notebooks"
    source.mkdir()
    write_notebook(source / "01_a.ipynb", "x = 1", "x = 2", tags={1: ["solution"]})
    write_invalid_notebook(source / "02_b.ipynb")
    write_notebook(source / "03_c.ipynb", "y = 1")
    fresh = tmp_path / "fresh"
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "01_a.ipynb").write_text("an earlier copy")

    with pytest.raises(ValueError, match="02_b.ipynb is not a valid notebook"):
        student.write_student_version(source, fresh)
    with pytest.raises(ValueError, match="02_b.ipynb is not a valid notebook"):
        student.write_student_version(source, earlier)

    assert not fresh.exists()
    assert sorted(path.name for path in earlier.iterdir()) == ["01_a.ipynb"]
    assert (earlier / "01_a.ipynb").read_text() == "an earlier copy"


def test_student_main_invalid_notebook(tmp_path, capsys):
    source = tmp_path / "notebooks"
    source.mkdir()
    write_invalid_notebook(source / "01_a.ipynb")

    status = student.main(["--source", str(source), "--output", str(tmp_path / "s")])

    assert status == 2
    assert f"error: {source / '01_a.ipynb'} is not a valid notebook" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "s").exists()


def test_student_main_source_is_file(tmp_path, capsys):
    notebook = write_notebook(tmp_path / "01_a.ipynb", "x = 1")

    status = student.main(["--source", str(notebook), "--output", str(tmp_path / "s")])

    error = capsys.readouterr().err
    assert status == 2
    assert f"error: notebook folder {notebook} is a file, not a folder" in error
    assert "not found" not in error
    assert not (tmp_path / "s").exists()


def test_student_main_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    status = student.main(["--output", str(blocker / "student")])
    assert status == 2
    assert "error: cannot create output folder" in capsys.readouterr().err


# Settings of the headless rerun.


def test_replace_settings_keeps_comments():
    source = (
        'DATASET = "synthetic"  # "synthetic" or "ham10000"\n'
        "SIZES = (\n    1,\n    2,\n)  # spans lines\n"
        'NOTE = "é"; SEED = 0\n'
        "seed_twice = 2 * SEED\n"
    )
    result = notebook_settings.replace_settings(
        source, {"DATASET": "ham10000", "SIZES": (3,), "SEED": 7}
    )
    assert result == (
        'DATASET = \'ham10000\'  # "synthetic" or "ham10000"\n'
        "SIZES = (3,)  # spans lines\n"
        'NOTE = "é"; SEED = 7\n'
        "seed_twice = 2 * SEED\n"
    )


def test_replace_settings_unknown_name():
    with pytest.raises(ValueError, match="ROUNDS not found.*DATASET, SEED"):
        notebook_settings.replace_settings("DATASET = 'x'\nSEED = 0\n", {"ROUNDS": 3})


def test_replace_settings_rejects_non_literal():
    with pytest.raises(ValueError, match="not a Python literal"):
        notebook_settings.replace_settings("SEED = 0\n", {"SEED": object()})


def test_find_settings_cell_skips_magics():
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell('DATASET = "in prose"'),
            nbformat.v4.new_code_cell("%matplotlib inline\nDATASET = 'x'"),
            nbformat.v4.new_code_cell("def f():\n    DATASET = 'local'"),
            nbformat.v4.new_code_cell(SETTINGS),
        ]
    )
    assert notebook_settings.find_settings_cell(notebook) == 3
    assert notebook_settings.read_settings(notebook) == {
        "DATASET": '"synthetic"',
        "DATA_ROOT": "None",
        "SEED": "0",
    }


def test_find_settings_cell_in_series():
    for path in COMMITTED:
        notebook = nbformat.read(path, as_version=4)
        assert notebook_settings.find_settings_cell(notebook) is not None, path.name
        assert notebook_settings.read_settings(notebook)["DATASET"] == '"synthetic"', (
            path.name
        )


def test_with_settings_marks_cell():
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import os"),
            nbformat.v4.new_code_cell(SETTINGS),
        ]
    )
    result = notebook_settings.with_settings(
        notebook, {"DATASET": "dermamnist", "SEED": 3}
    )
    assert result.cells[1].source == (
        "# Replaced for this run: DATASET, SEED\n"
        "DATASET = 'dermamnist'  # the data switch\nDATA_ROOT = None\nSEED = 3"
    )
    assert notebook.cells[1].source == SETTINGS


def test_with_settings_no_settings_cell():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("SEED = 0")])
    with pytest.raises(ValueError, match="00_x.ipynb has no settings cell"):
        notebook_settings.with_settings(notebook, {"SEED": 1}, name="00_x.ipynb")


def test_parse_assignment_literals():
    assert notebook_settings.parse_assignment("SEED=1") == ("SEED", 1)
    assert notebook_settings.parse_assignment("ALPHAS = (0.1, 1.0)") == (
        "ALPHAS",
        (0.1, 1.0),
    )
    assert notebook_settings.parse_assignment('NAME="text"') == ("NAME", "text")


def test_parse_assignment_invalid():
    with pytest.raises(ValueError, match="UPPER_CASE NAME"):
        notebook_settings.parse_assignment("seed=1")
    with pytest.raises(ValueError, match="UPPER_CASE NAME"):
        notebook_settings.parse_assignment("SEED")
    with pytest.raises(ValueError, match="'text' is not a Python literal"):
        notebook_settings.parse_assignment("NAME=text")


def test_check_dataset_names():
    assert rerun.check_dataset("HAM10000") == "ham10000"
    assert rerun.check_dataset("synthetic") == "synthetic"
    with pytest.raises(
        ValueError, match="unknown data set .isic.. Expected one of.*dermamnist"
    ):
        rerun.check_dataset("isic")


def test_prepare_runs_applies_settings(tmp_path):
    first = write_notebook(tmp_path / "01_a.ipynb", SETTINGS + "\nROUNDS = 5")
    second = write_notebook(tmp_path / "02_b.ipynb", SETTINGS)

    prepared = rerun.prepare_runs(
        [first, second], dataset="ham10000", data_root=tmp_path, extra={"ROUNDS": 2}
    )

    sources = [notebook.cells[0].source for _, notebook in prepared]
    assert [path for path, _ in prepared] == [first, second]
    assert f"DATA_ROOT = {str(tmp_path)!r}" in sources[0]
    assert f"DATA_ROOT = {str(tmp_path)!r}" in sources[1]
    assert "DATASET = 'ham10000'" in sources[1]
    assert "ROUNDS = 2" in sources[0]
    assert sources[1].startswith("# Replaced for this run: DATASET, DATA_ROOT\n")


def test_prepare_runs_bad_requests(tmp_path):
    paths = [write_notebook(tmp_path / "01_a.ipynb", SETTINGS)]
    no_root = [write_notebook(tmp_path / "02_b.ipynb", 'DATASET = "synthetic"')]
    no_settings = [write_notebook(tmp_path / "03_c.ipynb", "SEED = 0")]

    with pytest.raises(ValueError, match="ROUND appear in none of 01_a.ipynb"):
        rerun.prepare_runs(paths, dataset="synthetic", extra={"ROUND": 1})
    with pytest.raises(ValueError, match="set DATASET with --dataset"):
        rerun.prepare_runs(paths, dataset="synthetic", extra={"DATASET": "x"})
    with pytest.raises(FileNotFoundError, match="data root .*absent not found"):
        rerun.prepare_runs(paths, dataset="ham10000", data_root=tmp_path / "absent")
    with pytest.raises(ValueError, match="no DATA_ROOT setting in 02_b.ipynb"):
        rerun.prepare_runs(no_root, dataset="ham10000", data_root=tmp_path)
    with pytest.raises(ValueError, match="03_c.ipynb has no settings cell"):
        rerun.prepare_runs(no_settings, dataset="synthetic")
    with pytest.raises(ValueError, match="unknown data set"):
        rerun.prepare_runs(paths, dataset="isic")


# The headless rerun itself.


def test_rerun_reports_failure(tmp_path, capsys):
    source = tmp_path / "notebooks"
    source.mkdir()
    write_notebook(source / "01_ok.ipynb", SETTINGS, "print(DATASET, SEED)")
    write_notebook(source / "02_fails.ipynb", SETTINGS, "raise RuntimeError('boom')")
    output = tmp_path / "out"

    status = rerun.main(
        ["--source", str(source), "--output", str(output), "--dataset", "DermaMNIST"]
        + ["--set", "SEED=4", "--timeout", "60"]
    )

    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert status == 1
    assert lines[0].startswith("ok     01_ok.ipynb")
    assert lines[1].startswith("FAILED 02_fails.ipynb")
    assert lines[1].endswith(" s: cell 2 of 2: RuntimeError: boom")
    assert lines[2].startswith("1 of 2 notebook(s) ran in ")
    assert "failed: 02_fails.ipynb" in captured.err

    done = nbformat.read(output / "01_ok.ipynb", as_version=4)
    assert done.cells[1].outputs[0].text == "dermamnist 4\n"
    failed = nbformat.read(output / "02_fails.ipynb", as_version=4)
    assert failed.cells[1].outputs[0].output_type == "error"


def test_rerun_main_bad_input(tmp_path, capsys, committed_unchanged):
    status = rerun.main(["01", "--dataset", "isic", "--output", str(tmp_path / "o")])
    assert status == 2
    assert "error: unknown data set 'isic'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_rerun_main_invalid_notebook(tmp_path, capsys):
    source = tmp_path / "notebooks"
    source.mkdir()
    write_notebook(source / "01_ok.ipynb", SETTINGS)
    write_invalid_notebook(source / "02_bad.ipynb")
    output = tmp_path / "out"

    status = rerun.main(["--source", str(source), "--output", str(output)])

    assert status == 2
    assert f"error: {source / '02_bad.ipynb'} is not a valid notebook" in (
        capsys.readouterr().err
    )
    assert not output.exists()


@pytest.mark.parametrize("timeout", ["0", "-5"])
def test_rerun_main_non_positive_timeout(tmp_path, capsys, timeout):
    source = tmp_path / "notebooks"
    source.mkdir()
    write_notebook(source / "01_ok.ipynb", SETTINGS)
    output = tmp_path / "out"

    status = rerun.main(
        ["--source", str(source), "--output", str(output), "--timeout", timeout]
    )

    assert status == 2
    assert (
        f"error: timeout must be a positive whole number of seconds per cell "
        f"(--timeout on the command line), got {timeout}."
    ) in capsys.readouterr().err
    assert not output.exists()


def test_check_timeout_values():
    assert rerun.check_timeout(1) == 1
    for bad in (0, -5, True, 1.5):
        with pytest.raises(ValueError, match="positive whole number of seconds"):
            rerun.check_timeout(bad)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    with pytest.raises(ValueError, match="got 0"):
        rerun.execute_notebook(notebook, working_dir=".", timeout=0)


def test_rerun_series_on_ham10000_folder(tmp_path, capsys, committed_unchanged):
    folder = write_synthetic_ham10000(tmp_path / "HAM10000", n_images=N_TEST_IMAGES)
    output = tmp_path / "rerun"

    status = rerun.main(
        ["01", "--dataset", "ham10000", "--data-root", str(folder)]
        + ["--output", str(output)]
    )

    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    assert sorted(path.name for path in output.iterdir()) == [COMMITTED[0].name]
    executed = nbformat.read(output / COMMITTED[0].name, as_version=4)
    printed = "".join(
        item.get("text", "")
        for cell in executed.cells
        if cell.cell_type == "code"
        for item in cell.outputs
    )
    assert f"HAM10000: {N_TEST_IMAGES} images" in printed
    assert (
        f"DATA_ROOT = {str(folder)!r}"
        in executed.cells[notebook_settings.find_settings_cell(executed)].source
    )


# JupyterLab, as `make lab` starts it.


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(opener, url, token=None, timeout=5):
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"token {token}")
    with opener.open(request, timeout=timeout) as response:
        return json.load(response)


def test_jupyterlab_serves_notebooks(tmp_path):
    jupyter = Path(sys.executable).with_name("jupyter")
    assert jupyter.is_file(), f"{jupyter} not found; run `make setup` first"
    port, token = free_port(), secrets.token_hex(16)
    config = tmp_path / "config"
    config.mkdir()
    # Turn off the news feed, the update check and the PyPI extension manager, so
    # the server contacts no other host.
    (config / "jupyter_lab_config.json").write_text(
        json.dumps(
            {
                "LabApp": {
                    "news_url": None,
                    "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                    "extension_manager": "readonly",
                }
            }
        )
    )
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
    )
    command = [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1"]
    command += [f"--port={port}", "--port-retries=0"]
    command += [
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={NOTEBOOKS_DIR}",
    ]
    if os.geteuid() == 0:  # containers often run as root, which JupyterLab rejects
        command.append("--allow-root")
    base = f"http://127.0.0.1:{port}"
    # Requests go to the local server directly, never through an HTTP proxy that
    # the environment names.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    log_path = tmp_path / "jupyterlab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, f"jupyter lab exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no answer:\n{log_path.read_text()}"
            try:
                get_json(opener, f"{base}/api/status", token, timeout=1)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)

        with pytest.raises(urllib.error.HTTPError) as refused:
            get_json(opener, f"{base}/api/contents")
        assert refused.value.code == 403

        listing = get_json(opener, f"{base}/api/contents", token)
        served = {
            item["name"] for item in listing["content"] if item["type"] == "notebook"
        }
        assert {path.name for path in COMMITTED} <= served

        first = COMMITTED[0]
        opened = get_json(opener, f"{base}/api/contents/{first.name}?content=1", token)
        assert opened["type"] == "notebook"
        assert opened["format"] == "json"
        assert opened["content"]["nbformat"] == 4
        on_disk = nbformat.read(first, as_version=4)
        assert len(opened["content"]["cells"]) == len(on_disk.cells)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
