"""Pytest set-up shared by the unit tests and the nbval notebook run."""

from __future__ import annotations

import os

import nbval.plugin

# Progress bars (helpers.federated.run_federated) are off when CI is set.
os.environ.setdefault("CI", "true")

_compare_streams = nbval.plugin.transform_streams_for_comparison


def _streams_without_stderr(outputs):
    """Drop stderr streams so nbval compares stdout and results only.

    Progress bars and library warnings go to stderr and vary across machines and
    library versions. They stay visible in the notebook, but are not compared.
    """
    compared = [
        output
        for output in outputs
        if not (
            output.get("output_type") == "stream" and output.get("name") == "stderr"
        )
    ]
    return _compare_streams(compared)


nbval.plugin.transform_streams_for_comparison = _streams_without_stderr
