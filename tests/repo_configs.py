"""The tests' one way to read an experiment file: configs/<name>.py through `clapcomp.train.config.load`,
with overrides as on the command line, so a field a test sets this way counts as set on purpose
(`config.overrides`), as a user's `--config.FIELD=VALUE` would."""

from child_env import REPO  # tests/child_env.py (pytest pythonpath = tests)

from clapcomp.train.config import load


def load_config(name: str, arg: str | None = None, *overrides: str):
    """configs/<name>.py's get_config(arg) with `overrides` ("model.text.dropout=0.1", ...) applied."""
    return load(REPO / "configs" / f"{name}.py", arg, overrides)
