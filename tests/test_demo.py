"""`clapcomp demo`: a tiny end-to-end run twice (same table), and the table / reading on hand-made numbers."""

from __future__ import annotations

import json

import pytest

from clapcomp import demo


def _result(order: float, attribute: float, r1: float) -> dict:
    """One model's evaluator output, only the fields the demo reads; text = audio = group + 10."""

    def pairs(group):
        return {"pairs": {"group": group, "text": group + 10, "audio": group + 10,
                          "chance": {"group": 100 / 6, "text": 25.0, "audio": 25.0}}}  # fmt: skip

    return {"order": pairs(order), "attribute": pairs(attribute),
            "retrieval": {"text_to_audio": {"R@1": r1}, "audio_to_text": {"R@1": r1 - 2}}}  # fmt: skip


def test_table_reports_mean_and_population_spread_per_model():
    seeds = [{"plain CLAP": _result(10, 20, 30), "CompA": _result(40, 50, 31)},
             {"plain CLAP": _result(30, 20, 34), "CompA": _result(60, 70, 33)}]  # fmt: skip
    lines = {line.split("  ")[0]: line.split() for line in demo.format_table(seeds).splitlines()[2:]}
    # order group: plain (10, 30) -> 20 ± 10; CompA (40, 60) -> 50 ± 10; chance 100/6
    assert lines["order group"][2:] == ["20.0", "±", "10.0", "50.0", "±", "10.0", "16.7"]
    assert lines["attribute group"][2:] == ["20.0", "±", "0.0", "60.0", "±", "10.0", "16.7"]
    assert lines["retrieval t2a R@1"][3:] == ["32.0", "±", "2.0", "32.0", "±", "1.0"]
    assert lines["order text"][2:5] == ["30.0", "±", "10.0"]


def test_table_takes_any_models_in_the_order_given():
    seeds = [{"plain": _result(10, 20, 30), "s2": _result(40, 50, 31), "s2+s3": _result(45, 55, 29)}]
    lines = demo.format_table(seeds, ("s2+s3", "plain", "s2")).splitlines()
    assert lines[0].split()[1:] == ["s2+s3", "plain", "s2", "chance"]
    row = {line.split("  ")[0]: line.split() for line in lines[2:]}
    assert row["order group"][2:] == ["45.0", "10.0", "40.0", "16.7"]


@pytest.mark.parametrize(
    "compa, verdict",
    [
        ((37, 41, 29.0), "fixes"),  # +20 / +21 points, R@1 -1: exactly at the bar
        ((36, 60, 40.0), "does not clearly fix"),  # order only +19
        ((60, 60, 28.9), "does not clearly fix"),
    ],  # retrieval R@1 -1.1
)
def test_reading_applies_the_demo_bar(compa, verdict):
    text = demo.reading([{"plain CLAP": _result(17, 20, 30.0), "CompA": _result(*compa)}])
    assert f"CompA training {verdict} what" in text
    assert f"from 17.0 to {compa[0]:.1f} on order" in text


@pytest.mark.slow
def test_tiny_demo_end_to_end_is_deterministic(tmp_path, capsys):
    """Two runs of the whole pipeline (synth, records, two trainings, evaluation, report) on a tiny budget
    (the second loads the first's programs from the run's compilation cache: tests/conftest.py)."""
    tables = []
    for run in ("a", "b"):
        assert demo.main(["--workdir", str(tmp_path / run), "--n-train", "48", "--n-eval", "6", "--steps", "3"]) == 0
        out = capsys.readouterr().out
        assert "training CompA (compa loss, 3 steps)" in out and "step 3/3" in out
        assert f"outputs: {tmp_path / run}/report/demo.json" in out
        tables.append(out[out.index("metric") : out.index("Over 1 seed")])
        summary = json.loads((tmp_path / run / "report" / "demo.json").read_text())
        assert summary["seeds"] == [0] and set(summary["per_seed"][0]) == {"plain CLAP", "CompA"}
        assert sorted(p.name for p in (tmp_path / run / "report").glob("*.png"))
    assert tables[0] == tables[1]
    plain, compa = (json.loads((tmp_path / "a" / "seed0" / m / "config.json").read_text()) for m in ("plain", "compa"))
    assert plain["seed"] == compa["seed"] and plain["model"] == compa["model"] and plain["loss"] == "plain"
