"""Course tooling: the student version and the headless rerun of the series.

Run the tools from the repository root as modules, for example
`.venv/bin/python -m tools.student`, or through `make student` and `make rerun`.
"""
