"""Tests for the notebooks' plain printing of warnings and log lines."""

from __future__ import annotations

import logging
import warnings

import pytest

from helpers.notebook_output import LOG_FORMAT, plain_output, short_warning


@pytest.fixture
def restore_output():
    formatwarning = warnings.formatwarning
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    warnings.formatwarning = formatwarning
    root.handlers[:] = handlers
    root.setLevel(level)


def test_short_warning_drops_path():
    text = short_warning("seeded keys", UserWarning, "/some/path/file.py", 12)

    assert text == "UserWarning: seeded keys\n"


def test_plain_output_formats_warnings(restore_output):
    # pytest captures warnings itself, so this calls the installed formatter.
    plain_output()

    text = warnings.formatwarning("noise is seeded", RuntimeWarning, "/a/b.py", 3)
    assert text == "RuntimeWarning: noise is seeded\n"


def test_plain_output_formats_log_lines(restore_output):
    plain_output()

    handlers = logging.getLogger().handlers
    assert len(handlers) == 1
    assert handlers[0].formatter._fmt == LOG_FORMAT
    record = logging.LogRecord(
        "helpers.federated",
        logging.WARNING,
        "x.py",
        1,
        "hospital %s left",
        ("a",),
        None,
    )
    assert handlers[0].format(record) == "WARNING:helpers.federated: hospital a left"
