"""The tests' one way to read an experiment file: configs/<name>.py through `clapcomp.train.config.load`,
with overrides as on the command line, so a field a test sets this way counts as set on purpose
(`config.overrides`), as a user's `--config.FIELD=VALUE` would; and their one way to import a script that
is no package module (benchmarks/*.py, examples/*, a StableHLO export's loader)."""

import importlib.util
from pathlib import Path

from child_env import REPO  # tests/child_env.py (pytest pythonpath = tests)

from clapcomp.train.config import load


def load_config(name: str, arg: str | None = None, *overrides: str):
    """configs/<name>.py's get_config(arg) with `overrides` ("model.text.dropout=0.1", ...) applied."""
    return load(REPO / "configs" / f"{name}.py", arg, overrides)


def load_script(path: str | Path, name: str | None = None):
    """The Python file at `path` (e.g. REPO / "benchmarks" / "hlo.py"), imported as module `name` (its stem)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
