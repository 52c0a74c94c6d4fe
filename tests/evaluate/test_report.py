"""The report writes strict JSON with every number and real PNG files for every benchmark kind."""

import json

import numpy as np

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
    paths = report.write_report(results, tmp_path / "out")
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
