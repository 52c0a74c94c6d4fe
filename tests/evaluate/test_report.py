"""The report writes strict JSON with every number and real PNG files for every benchmark kind; several
seeds are drawn as their mean with the spread as error bars, titled with the seeds."""

import json

import numpy as np
import pytest

from clapcomp.evaluate import compa, report, retrieval, zeroshot

PNG = b"\x89PNG\r\n\x1a\n"


def compa_result(seed):
    rng = np.random.default_rng(seed)
    rows = [
        {
            "captions": [f"a{i} followed by b{i}", f"b{i} followed by a{i}"] + (["a and b"] if i < 2 else []),
            "files": [],
            "category": None,
        }
        for i in range(5)
    ]
    sims = [np.eye(len(r["captions"])) + 0.6 * rng.normal(size=(len(r["captions"]),) * 2) for r in rows]
    out = {"benchmark": "compa", "data": "order.csv", **compa.compa_metrics(rows, sims)}
    out["sample"] = {"captions": rows[0]["captions"], "audio": ["x.wav", "y.wav", "z.wav"], "sim": sims[0].tolist()}
    return out


def results_for(seed):
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(6, 12)) + np.repeat(np.eye(6), 2, axis=1)
    ret = {"benchmark": "retrieval", "data": "caps.csv", **retrieval.retrieval_metrics(sim, np.repeat(np.arange(6), 2))}
    zs = zeroshot.zero_shot_metrics(rng.normal(size=(8, 3)), np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    zs.update(benchmark="zeroshot", per_class_top1={"a": 50.0, "b": float("nan"), "c": 0.0})
    return {"order": compa_result(seed), "clotho": ret, "esc50": zs}


def test_write_report_json_and_pngs(tmp_path):
    results = {"plain CLAP": results_for(0), "CompA": results_for(1)}
    paths = report.write_report([results], tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "results.json",
            "order_scores.png",
            "order_breakdown.png",
            "order_similarity_plain_CLAP.png",
            "order_similarity_CompA.png",
            "clotho_retrieval.png",
            "esc50_zeroshot.png",
        ]
    )
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG
    data = json.loads((tmp_path / "out" / "results.json").read_text())  # strict: NaN became null
    assert data["CompA"]["esc50"]["per_class_top1"]["b"] is None
    want = results["CompA"]["order"]
    got = data["CompA"]["order"]
    assert got["pairs"]["group"] == want["pairs"]["group"]
    assert got["triplets"]["three_way"]["chance"]["group"] == want["triplets"]["three_way"]["chance"]["group"]
    assert got["breakdown"] == want["breakdown"]
    assert data["plain CLAP"]["clotho"]["audio_to_text"] == results["plain CLAP"]["clotho"]["audio_to_text"]


def drawn(monkeypatch) -> dict:
    """Patch the report's figure saving to record, per file stem, each axes' title and bars:
    {stem: {"suptitle": str, "axes": [(title, {model: (heights, error half-lengths or None)})]}}."""
    figs, real = {}, report._save

    def save(plt, fig, out_dir, stem):
        axes = []
        for ax in fig.axes:
            bars = {}
            for c in ax.containers:
                if hasattr(c, "patches") and c.get_label():
                    err = None
                    if c.errorbar is not None:
                        err = [(s[1][1] - s[0][1]) / 2 for s in c.errorbar.lines[2][0].get_segments()]
                    bars[c.get_label()] = ([p.get_height() for p in c.patches], err)
            axes.append((ax.get_title(), bars))
        figs[stem] = {"suptitle": fig._suptitle.get_text() if fig._suptitle else "", "axes": axes}
        return real(plt, fig, out_dir, stem)

    monkeypatch.setattr(report, "_save", save)
    return figs


def test_several_seeds_draw_the_mean_with_the_spread_titled_with_the_seeds(tmp_path, monkeypatch):
    runs = [{"plain CLAP": results_for(s), "CompA": results_for(s + 10)} for s in (0, 1, 2)]
    figs = drawn(monkeypatch)
    report.write_report(runs, tmp_path, seeds=[0, 1, 2])
    assert "seeds 0, 1, 2" in figs["order_scores"]["suptitle"]
    pairs_title, bars = figs["order_scores"]["axes"][0]
    assert pairs_title.startswith("order: pairs (all rows)")
    for model in ("plain CLAP", "CompA"):
        per_seed = np.array([[r[model]["order"]["pairs"][k] for k in report.SCORES] for r in runs], np.float64)
        heights, err = bars[model]
        np.testing.assert_allclose(heights, per_seed.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(err, per_seed.std(axis=0), rtol=1e-9, atol=1e-12)
        r1 = [r[model]["clotho"]["text_to_audio"]["R@1"] for r in runs]
        t2a_title, t2a = figs["clotho_retrieval"]["axes"][0]
        assert "seeds 0, 1, 2" in t2a_title
        assert t2a[model][0][0] == pytest.approx(np.mean(r1)) and t2a[model][1][0] == pytest.approx(np.std(r1))
    assert "seed 2" in figs["order_similarity_CompA"]["axes"][0][0]  # one run's sample: the last seed's
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["seeds"] == [0, 1, 2] and len(data["per_seed"]) == 3
    assert data["per_seed"][1]["CompA"]["order"]["pairs"]["group"] == runs[1]["CompA"]["order"]["pairs"]["group"]


def test_one_run_has_no_error_bars_and_a_seed_needs_a_run(tmp_path, monkeypatch):
    figs = drawn(monkeypatch)
    results = {"plain CLAP": results_for(0)}
    report.write_report([results], tmp_path, seeds=[4])
    _, bars = figs["order_scores"]["axes"][0]
    assert bars["plain CLAP"] == ([results["plain CLAP"]["order"]["pairs"][k] for k in report.SCORES], None)
    assert figs["order_scores"]["suptitle"] == "order · seed 4"
    with pytest.raises(ValueError, match="2 seeds for 1 runs"):
        report.write_report([results], tmp_path, seeds=[0, 1])


def test_mean_and_spread_leaf_by_leaf():
    runs = [{"m": {"a": 1.0, "n": 4, "nan": None, "names": ["x"]}},
            {"m": {"a": 3.0, "n": 6, "nan": 2.0, "names": ["y"], "flag": True, "only_last": 5.0}}]  # fmt: skip
    mean, std = report._mean_and_spread(runs)
    assert mean["m"]["a"] == 2.0 and std["m"]["a"] == 1.0 and mean["m"]["n"] == 5.0
    assert np.isnan(mean["m"]["nan"]) and mean["m"]["names"] == ["y"] and std["m"]["names"] is None
    assert (
        (mean["m"]["only_last"], std["m"]["only_last"]) == (5.0, 0.0)
        and mean["m"]["flag"] is True
        and std["m"]["flag"] is None
    )


def test_an_interrupted_report_leaves_the_previous_results_json(tmp_path, monkeypatch):
    import pytest

    out = tmp_path / "out"
    report.write_report([{"m": results_for(0)}], out)
    before = (out / "results.json").read_bytes()

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "_retrieval_bars", dies)  # after the CompA plots, before results.json
    with pytest.raises(KeyboardInterrupt):
        report.write_report([{"m": results_for(1)}], out)
    assert (out / "results.json").read_bytes() == before
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # no temporary file left
    monkeypatch.undo()
    report.write_report([{"m": results_for(1)}], out)
    assert (out / "results.json").read_bytes() != before
