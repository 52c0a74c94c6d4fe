"""`clapcomp demo`: a tiny end-to-end run twice (same table), and the table / reading on hand-made numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from child_env import child_env  # tests/child_env.py (pytest pythonpath = tests)

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


def test_charts_draw_the_tables_means_and_spread_titled_with_the_seeds(tmp_path, monkeypatch):
    """With several seeds the order chart's bars are the printed table's means, the error bars its
    spread, and the title names the seeds (it used to draw the last seed's numbers, untitled)."""
    from clapcomp.evaluate import report

    def run(order, attribute, r1):
        r = _result(order, attribute, r1)
        for bench in ("order", "attribute"):
            r[bench].update(benchmark="compa")
            r[bench]["pairs"]["n"] = 200
        r["retrieval"]["benchmark"] = "retrieval"
        return r

    seeds = [{"plain CLAP": run(10, 20, 30), "CompA": run(40, 50, 31)},
             {"plain CLAP": run(30, 20, 34), "CompA": run(60, 70, 33)},
             {"plain CLAP": run(17, 26, 31), "CompA": run(85, 61, 30)}]  # fmt: skip
    drawn = {}

    def save(plt, fig, out_dir, stem):
        drawn[stem] = fig
        return real(plt, fig, out_dir, stem)

    real = report._save
    monkeypatch.setattr(report, "_save", save)
    summary = demo.write_outputs(seeds, [0, 1, 2], tmp_path, seconds=1.0)
    assert summary["seeds"] == [0, 1, 2] and len(summary["per_seed"]) == 3
    table = {line.split("  ")[0]: line.split() for line in demo.format_table(seeds).splitlines()[2:]}
    fig = drawn["order_scores"]
    assert "seeds 0, 1, 2" in fig._suptitle.get_text()
    ax = fig.axes[0]
    for i, model in enumerate(("plain CLAP", "CompA")):
        bars = next(c for c in ax.containers if c.get_label() == model)
        group = bars.patches[report.SCORES.index("group")].get_height()
        spread = bars.errorbar.lines[2][0].get_segments()[report.SCORES.index("group")]
        assert f"{group:.1f}" == table["order group"][2 + 3 * i]
        assert f"{(spread[1][1] - spread[0][1]) / 2:.1f}" == table["order group"][4 + 3 * i]


@pytest.mark.slow
def test_tiny_demo_end_to_end_then_again_gives_the_same_table(tmp_path):
    """`clapcomp demo` as a user runs it (its own process, one CPU device) on a tiny budget: the whole
    pipeline (synth, records, two trainings, evaluation, report); a second `clapcomp demo` on the same
    workdir resumes the finished trainings and prints the same table, and the seed's data and records
    made again elsewhere are byte-identical. (Two trainings of one config are bit-identical:
    tests/train/test_resume.py compares resumed runs with an uninterrupted one.)"""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "clapcomp.cli", "demo", "--workdir", str(run), "--n-train", "48", "--n-eval", "6",
           "--steps", "3"]  # fmt: skip
    tables = []
    for _ in range(2):
        r = subprocess.run(cmd, env=child_env(devices=1), cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        out = r.stdout
        assert "training CompA (compa loss, 3 steps)" in out and f"outputs: {run}/report/demo.json" in out
        tables.append(out[out.index("metric") : out.index("Over 1 seed")])
        assert ("step 3/3" in out) is (len(tables) == 1)  # the second run trains no step
        summary = json.loads((run / "report" / "demo.json").read_text())
        assert summary["seeds"] == [0] and set(summary["per_seed"][0]) == {"plain CLAP", "CompA"}
        assert sorted(p.name for p in (run / "report").glob("*.png"))
    assert tables[0] == tables[1]
    plain, compa = (json.loads((run / "seed0" / m / "config.json").read_text()) for m in ("plain", "compa"))
    assert plain["seed"] == compa["seed"] and plain["model"] == compa["model"] and plain["loss"] == "plain"

    demo.make_data(tmp_path / "again", 0, n_train=48, n_eval=6)
    files = {d: sorted(p for p in (run / "seed0" / d).rglob("*") if p.is_file()) for d in ("data", "records")}
    assert len(files["data"]) > 48 and files["records"]
    for p in files["data"] + files["records"]:
        again = tmp_path / "again" / p.relative_to(run / "seed0")
        if p.name == "sha256.json":  # the build's manifest: equal but for stats.json's line
            first, second = (json.loads(f.read_text()) for f in (p, again))
            for m in (first, second):
                m["sha256"].pop("stats.json"), m["bytes"].pop("stats.json")
            assert first == second, p
        elif p.name != "stats.json":  # it also holds the input paths and the seconds the build took
            assert again.read_bytes() == p.read_bytes(), p
