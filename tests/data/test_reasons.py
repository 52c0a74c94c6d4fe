"""The one bad-data vocabulary: every reason the code raises is in the table and vice versa, old
names map to new ones, and docs/data.md carries the table."""

import os
import re

import pytest

from clapcomp.data import reasons
from clapcomp.data.reasons import READ_REASONS, REASONS, BadData, renamed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _raised_in_code() -> set[str]:
    """Reason names passed to `BadData(...)` anywhere in clapcomp/ (found by reading the source), and to
    `clapcomp.decode.DecodeError(...)`, which the data code re-raises as `BadData` under the same name."""
    found = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "clapcomp")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    found |= set(re.findall(r'(?:BadData|DecodeError)\(\s*"(\w+)"', f.read()))
    return found


def test_one_table_one_spelling_per_reason():
    names = [r.name for r in REASONS]
    assert len(names) == len(set(names))
    assert all(r.stages and set(r.stages) <= {"build", "read"} and r.meaning for r in REASONS)
    raised = _raised_in_code()
    assert raised == set(names), (raised - set(names), set(names) - raised)  # none unknown, none dead
    assert not set(reasons.RENAMED) & set(names) and set(reasons.RENAMED.values()) <= set(names)


def test_read_reasons_keep_the_order_of_the_skips_vector():
    """`_skips` counts by position; the pipeline's order stays that of the table's read rows."""
    assert READ_REASONS == ("bad_record", "corrupt", "truncated", "too_long", "missing_caption", "timeout",
                            "unexpected_error")  # fmt: skip


def test_bad_data_refuses_an_unknown_reason():
    e = BadData("corrupt", "cannot open")
    assert isinstance(e, ValueError) and (e.reason, e.detail, str(e)) == (
        "corrupt",
        "cannot open",
        "corrupt: cannot open",
    )
    with pytest.raises(ValueError, match="unknown bad-data reason 'corrupt_audio'"):
        BadData("corrupt_audio")


def test_old_names_are_counted_under_the_new_ones():
    old = {"corrupt_audio": 2, "corrupt": 1, "truncated_audio": 4, "no_caption": 5, "timeout": 1}
    assert renamed(old) == {"corrupt": 3, "truncated": 4, "missing_caption": 5, "timeout": 1}


def test_docs_carry_the_table():
    with open(os.path.join(ROOT, "docs", "data.md")) as f:
        assert reasons.markdown_table() in f.read(), (
            "regenerate: python -c 'from clapcomp.data import reasons; print(reasons.markdown_table())'"
        )
