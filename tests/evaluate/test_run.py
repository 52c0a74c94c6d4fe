"""`clapcomp eval` end to end with stand-in models (clapcomp.load patched), and EVALUATORS."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf

import clapcomp
from clapcomp.evaluate import run

D = 2


class FakeEmbedder:
    """Audio embedding = its first D samples; text embedding from a dict (missing text -> [1, 1])."""

    def __init__(self, text_vectors):
        self.text_vectors = text_vectors

    def embed_audio(self, audio, sample_rate):
        v = np.stack([a[:D] for a in audio]).astype(np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_text(self, texts):
        v = np.array([self.text_vectors.get(t, [1.0, 1.0]) for t in texts], np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


LOADED: list = []  # (path, step) of every clapcomp.load call in a test


@pytest.fixture
def bench(tmp_path, monkeypatch):
    e1, e2 = np.eye(2)
    for name, vec in {"p.wav": e1, "q.wav": e2}.items():
        wave = np.zeros(32, np.float32)
        wave[:D] = vec
        sf.write(tmp_path / name, wave, 48000, subtype="FLOAT")
    (tmp_path / "order.csv").write_text(
        "pair_caption,reversed_pair_caption,pair_file,reversed_pair_file\n"
        "a dog then a bell,a bell then a dog,p.wav,q.wav\n"
        "a cat while rain,rain while a cat,q.wav,p.wav\n"
    )
    good = {"a dog then a bell": e1, "a bell then a dog": e2, "a cat while rain": e2, "rain while a cat": e1}
    models = {"/m/compa": FakeEmbedder(good), "/m/plain": FakeEmbedder({})}  # plain: all captions alike
    LOADED.clear()
    monkeypatch.setattr(clapcomp, "load", lambda path, step=None: LOADED.append((path, step)) or models[path])
    return tmp_path


def test_eval_cli_compares_models_and_writes_report(bench, capsys):
    out = bench / "report"
    rc = run.main(
        [
            "--model",
            "plain=/m/plain",
            "--model",
            "/m/compa",
            "--benchmark",
            "compa",
            "--data",
            str(bench / "order.csv"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "plain" in printed and "compa" in printed and "group=100.0" in printed and "group=  0.0" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["compa"]["order"]["pairs"]["group"] == 100.0
    assert data["plain"]["order"]["pairs"]["counts"] == {"text": 0, "audio": 0, "group": 0}
    assert data["compa"]["order"]["breakdown"]["connective"] == {
        "then": {"n": 1, "text": 100.0, "audio": 100.0, "group": 100.0},
        "while": {"n": 1, "text": 100.0, "audio": 100.0, "group": 100.0},
    }
    for png in ("order_scores.png", "order_breakdown.png", "order_similarity_compa.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_eval_cli_errors(bench, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["--model", "/m/compa", "--benchmark", "compa", "--data", str(bench / "missing.csv")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(
            [
                "--model",
                "x=/m/compa",
                "--model",
                "x=/m/plain",
                "--benchmark",
                "compa",
                "--data",
                str(bench / "order.csv"),
            ]
        )


def test_evaluators_by_config_name(bench):
    e1, e2 = np.eye(2)
    (bench / "caps.csv").write_text("audio,caption\np.wav,one\nq.wav,two\n")
    (bench / "labels.csv").write_text("audio,label\np.wav,one\nq.wav,two\n")
    emb = FakeEmbedder({"one": e1, "two": e2, "This is a sound of one.": e1, "This is a sound of two.": e2})
    configs = {
        "compa": dict(data=bench / "order.csv"),
        "retrieval": dict(data=bench / "caps.csv", batch_size=1),
        "zeroshot": dict(data=bench / "labels.csv"),
    }
    got = {name: run.EVALUATORS[name](emb, **cfg) for name, cfg in configs.items()}
    assert got["compa"]["pairs"]["group"] == 0.0  # emb has no CompA captions: all alike
    assert got["retrieval"]["text_to_audio"]["R@1"] == 100.0
    assert got["zeroshot"]["top1"] == 100.0
    assert set(run.headline(got["retrieval"])) == {
        f"{d}_{m}" for d in ("t2a", "a2t") for m in ("R@1", "R@5", "R@10", "mAP@10")
    }


def test_eval_cli_prints_chance_and_that_ties_fail(bench, capsys):
    run.main(["--model", "plain=/m/plain", "--benchmark", "compa", "--data", str(bench / "order.csv")])
    model_line, chance_line = capsys.readouterr().out.splitlines()
    assert "text=  0.0" in model_line  # plain: every caption scores alike, a tie, so not 25 but 0
    # two captions x two audios, iid similarities: text = audio = (1/2)^2, group = 1/6 (compa.py docstring)
    assert chance_line.split("(")[0].split() == ["chance", "text=", "25.0", "audio=", "25.0", "group=", "16.7"]
    assert "a tie counts as a failure" in chance_line


def test_eval_cli_retrieval_line_has_r1_r5_r10_map(bench, capsys):
    (bench / "caps.csv").write_text("audio,caption\np.wav,a dog then a bell\nq.wav,a bell then a dog\n")
    run.main(["--model", "/m/compa", "--benchmark", "retrieval", "--data", str(bench / "caps.csv")])
    cells = capsys.readouterr().out.split()[2:]
    assert cells == [f"{d}_{m}=100.0" for d in ("t2a", "a2t") for m in ("R@1", "R@5", "R@10", "mAP@10")]


def test_loading_a_workdir_logs_no_orbax_read_only_notice(bench, caplog):
    """Opening a real Orbax checkpoint read-only (what loading a workdir for eval / export does) logs
    no warning; a plain read-only CheckpointManager does (so the check can fail)."""
    ocp = pytest.importorskip("orbax.checkpoint")
    from clapcomp.train.checkpoint import read_only_manager

    ckpt = bench / "checkpoints"
    with ocp.CheckpointManager(ckpt.absolute()) as manager:
        manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.ones(2)})))
    with caplog.at_level(logging.INFO):
        assert read_only_manager(ckpt).all_steps() == [1]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    with caplog.at_level(logging.INFO):
        ocp.CheckpointManager(ckpt.absolute(), options=ocp.CheckpointManagerOptions(read_only=True))
    assert any("read only" in r.getMessage() for r in caplog.records)


def test_eval_cli_passes_step_to_load(bench):
    assert (
        run.main(["--model", "/m/compa", "--benchmark", "compa", "--data", str(bench / "order.csv"), "--step", "4"])
        == 0
    )
    assert LOADED == [("/m/compa", 4)]
