"""`clapcomp search index | query` against brute force: NumPy cosine over `clapcomp.load` embeddings of
windows cut by hand (tests/use/conftest.py); incremental updates, refusals, an interrupted update."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from clapcomp.use import search
from clapcomp.use.search import Searcher, index_main, query_main

QUERY = "a door slams, then a dog barks"
GOOD = ["whistle.wav", "sub/siren.wav", "sub/noise.flac", "long/chord.wav"]


def brute_force(clap, library, reference_windows, query: np.ndarray) -> list[tuple[str, float, float]]:
    """[(file, best window's cosine, its offset)] best first."""
    out = []
    for name in GOOD:
        offsets, emb = reference_windows(clap, library / name)
        sims = emb.astype(np.float64) @ query
        out.append((str((library / name).resolve()), float(sims.max()), float(offsets[sims.argmax()])))
    return sorted(out, key=lambda r: -r[1])


def _index(model_dir, idx, *paths, extra=()) -> tuple[int, dict]:
    return index_main(["--model", str(model_dir), "--out", str(idx), "--json", *extra, *map(str, paths)])


def test_exact_query_equals_brute_force(clap, model_dir, library, tmp_path, capsys, reference_windows):
    idx = tmp_path / "idx"
    assert _index(model_dir, idx, library) == 1  # broken.wav: skipped, said so
    out, err = capsys.readouterr()
    assert json.loads(out) == {"embedded": 4, "unchanged": 0, "removed": 0, "total": 4} and "broken.wav" in err
    assert query_main(["--index", str(idx), "--top-k", "4", "--json", QUERY]) == 0
    hits = json.loads(capsys.readouterr().out)
    expected = brute_force(clap, library, reference_windows, clap.embed_text([QUERY])[0].astype(np.float64))
    assert [h["file"] for h in hits] == [e[0] for e in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [e[1] for e in expected], atol=1e-5)
    assert [h["offset"] for h in hits] == [e[2] for e in expected]
    assert len({round(h["score"], 4) for h in hits}) == 4  # distinct scores: the order is meaningful

    # query by example: the long recording's mean window vector
    long = library / "long" / "chord.wav"
    assert query_main(["--index", str(idx), "--top-k", "2", "--json", "--audio", str(long)]) == 0
    hits = json.loads(capsys.readouterr().out)
    _, emb = reference_windows(clap, long)
    q = emb.astype(np.float64).mean(0)
    expected = brute_force(clap, library, reference_windows, q / np.linalg.norm(q))[:2]
    assert [h["file"] for h in hits] == [e[0] for e in expected] and hits[0]["file"] == str(long.resolve())
    np.testing.assert_allclose([h["score"] for h in hits], [e[1] for e in expected], atol=1e-5)


@pytest.mark.parametrize("mode", ["hnsw", "ivf"])
def test_approximate_modes_find_the_exact_top_hits_on_a_small_library(clap, model_dir, library, tmp_path, capsys, mode):
    (library / "broken.wav").unlink()
    assert _index(model_dir, tmp_path / "exact", library) == 0
    assert _index(model_dir, tmp_path / mode, library, extra=["--approximate", mode]) == 0
    capsys.readouterr()
    exact = Searcher(tmp_path / "exact", clap=clap).text(QUERY, 3)
    approx = Searcher(tmp_path / mode, clap=clap).text(QUERY, 3)
    assert json.loads((tmp_path / mode / "gen-1" / "index.json").read_text())["mode"] == mode
    os.utime(library / "whistle.wav", ns=(1, 1))  # "changed": the update re-embeds it and keeps the mode
    assert _index(model_dir, tmp_path / mode, library) == 0
    assert json.loads((tmp_path / mode / "gen-2" / "index.json").read_text())["mode"] == mode
    assert [h["file"] for h in approx] == [h["file"] for h in exact]


def test_incremental_update(model_dir, library, tmp_path, capsys, write_clip):
    idx = tmp_path / "idx"
    (library / "broken.wav").unlink()
    assert _index(model_dir, idx, library) == 0
    assert _index(model_dir, idx, library) == 0
    outs = capsys.readouterr().out.splitlines()
    assert json.loads(outs[1]) == {"embedded": 0, "unchanged": 4, "removed": 0, "total": 4}
    before = Searcher(idx).index
    (library / "sub" / "siren.wav").unlink()
    write_clip(library / "whistle.wav", "rising chirp", 9)  # changed: new size / mtime
    write_clip(library / "new" / "hiss.wav", "hiss", 8)
    assert _index(model_dir, idx, library) == 0
    assert json.loads(capsys.readouterr().out) == {"embedded": 2, "unchanged": 2, "removed": 1, "total": 5 - 1}
    after = Searcher(idx).index
    assert sorted(f["path"] for f in after.files) == sorted(
        str((library / n).resolve()) for n in ["whistle.wav", "sub/noise.flac", "long/chord.wav", "new/hiss.wav"]
    )
    kept = str((library / "long" / "chord.wav").resolve())  # unchanged: its rows are copied, not re-embedded
    rows = lambda ix: ix.vectors[ix.row_file == [f["path"] for f in ix.files].index(kept)]
    np.testing.assert_array_equal(rows(after), rows(before))
    assert sorted(p.name for p in idx.iterdir()) == ["CURRENT", "gen-2"]  # the no-change run wrote nothing


def test_interrupted_update_leaves_the_previous_index(model_dir, library, tmp_path, capsys, monkeypatch, write_clip):
    idx = tmp_path / "idx"
    assert _index(model_dir, idx, library) == 1
    before = Searcher(idx).text(QUERY, 4)
    write_clip(library / "new.wav", "buzz", 5)
    real = search.embed_files

    def interrupted(*args, **kwargs):
        yield next(real(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "embed_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _index(model_dir, idx, library)
    monkeypatch.undo()
    assert Searcher(idx).text(QUERY, 4) == before


def test_refusals(model_dir, other_model_dir, library, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert query_main(["--index", str(idx), QUERY]) == 2
    assert f"no search index at {idx}" in capsys.readouterr().err
    _index(model_dir, idx, library)
    capsys.readouterr()
    current = (idx / "CURRENT").read_text()
    stamp = os.stat(idx / current.strip() / "vectors.npz").st_mtime_ns
    assert query_main(["--index", str(idx), "--model", str(other_model_dir), QUERY]) == 2
    assert "was built with another model" in capsys.readouterr().err
    assert _index(other_model_dir, idx, library) == 2
    assert "was built with another model" in capsys.readouterr().err
    assert (idx / "CURRENT").read_text() == current
    assert os.stat(idx / current.strip() / "vectors.npz").st_mtime_ns == stamp
    moved = tmp_path / "moved"
    model_dir.rename(moved)
    try:
        assert query_main(["--index", str(idx), QUERY]) == 2
        assert "is gone; pass --model M" in capsys.readouterr().err
        assert query_main(["--index", str(idx), "--model", str(moved), QUERY]) == 0
    finally:
        moved.rename(model_dir)
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert _index(model_dir, tmp_path / "idx2", tmp_path / "empty") == 2
    assert "no audio files under" in capsys.readouterr().err and not (tmp_path / "idx2").exists()
    (tmp_path / "notidx").mkdir()
    (tmp_path / "notidx" / "thesis.tex").write_text("mine")
    assert _index(model_dir, tmp_path / "notidx", library) == 2
    assert "is not a clapcomp search index" in capsys.readouterr().err


def test_cli_dispatches_the_two_word_commands(tmp_path, capsys):
    from clapcomp.cli import main

    assert main(["search", "query", "--index", str(tmp_path / "nothing"), QUERY]) == 2
    assert "no search index at" in capsys.readouterr().err
    assert main(["--help"]) == 0
    usage = capsys.readouterr().err
    assert all(f"clapcomp {c}" in usage for c in ("classify", "search index", "search query", "search serve", "probe"))


def test_one_writer_at_a_time(model_dir, library, tmp_path, capsys):
    from clapcomp import fs

    idx = tmp_path / "idx"
    with fs.lock_folder(idx, purpose="clapcomp search index"):  # another writer holds the index
        assert _index(model_dir, idx, library) == 2
    err = capsys.readouterr().err
    assert "is being written by pid" in err and "clapcomp search index" in err and not (idx / "CURRENT").exists()
