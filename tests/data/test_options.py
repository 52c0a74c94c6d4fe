"""The data options object: built from the training config under its names, frozen, checked; the batch
field table gives the arrays the pipeline allocates."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from clapcomp.data.options import FIELDS, DataConfig, built_at, fields, zeros
from clapcomp.train.config import defaults


def test_from_config_keeps_the_config_names():
    c = defaults()
    c.seed = 5
    c.data.update(batch_size=16, num_negatives=3, num_positives=2, workers=4)
    audio = SimpleNamespace(sample_rate=16000, clip_samples=4000, fusion=True)
    options = DataConfig.from_config(c, audio)
    assert options == DataConfig(batch_size=16, clip_samples=4000, sample_rate=16000, fusion=True, num_negatives=3,
                                 num_positives=2, seed=5, workers=4)  # fmt: skip
    assert options.out_samples == 12000 and dataclasses.replace(options, fusion=False).out_samples == 4000
    assert DataConfig.from_config(c, audio, workers=0, max_samples=5000).out_samples == 5000
    # every option of config.data (but the two inputs the caller opens) is a DataConfig field of the same name
    assert set(c.data) - {"train", "tower_cache"} <= {f.name for f in dataclasses.fields(DataConfig)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.num_negatives = 1


@pytest.mark.parametrize(
    "field, value", [("batch_size", 0), ("clip_samples", 0), ("num_negatives", -1), ("workers", -2)]
)
def test_impossible_options_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        DataConfig(**{"batch_size": 4, "clip_samples": 100, field: value})


def test_zeros_follow_the_field_table():
    got = {k: (v.shape, v.dtype.name, v.any()) for k, v in zeros("negatives", K=3, L=5, S=7).items()}
    assert got == {
        "neg_input_ids": ((3, 5), "int32", False),
        "neg_attention_mask": ((3, 5), "int32", False),
        "neg_mask": ((3,), "bool", False),
    }
    assert zeros("length")["lengths"].shape == () and zeros("waveform", S=7)["waveform"].dtype == np.float32
    assert [f.name for f in fields("pooled", "caption")] == ["audio_pooled", "input_ids", "attention_mask"]
    assert len({f.name for f in FIELDS}) == len(FIELDS)
    with pytest.raises(ValueError, match="unknown batch parts"):
        fields("audio")


def test_docs_name_every_option_and_field():
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "data.md")) as f:
        text = f.read()
    missing = [
        n for n in [f.name for f in dataclasses.fields(DataConfig)] + [f.name for f in FIELDS] if f"`{n}`" not in text
    ]
    assert not missing, f"docs/data.md does not describe {missing}"


def test_mixture_parses_dirs_and_weights_and_refuses_what_it_cannot_count():
    from clapcomp.data.options import mixture

    assert mixture("/d/a") == [("/d/a", 1.0)]
    assert mixture("/d/a, /e/b/", "3, 1") == [("/d/a", 3.0), ("/e/b/", 1.0)]
    assert mixture("/d/a,/e/b") == [("/d/a", 1.0), ("/e/b", 1.0)]
    for train, weights, message in [
        ("/d/a,/e/b", "3", "gives 1 weights for the 2 directories"),
        ("/d/a,/e/b", "3,x", "expected numbers"),
        ("/d/a,/e/b", "3,0", "must be > 0"),
        ("/d/a,/e/a", "", "share a folder name"),
        ("", "", "is empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            mixture(train, weights)
    c = defaults()
    c.data.update(train="/d/a,/e/b", weights="3,1")
    assert DataConfig.from_config(c, SimpleNamespace(sample_rate=8000, clip_samples=80, fusion=False)).weights == (3, 1)


def test_int16_batches_only_for_sources_built_at_the_model_rate(tmp_path):
    """`built_at`: int16 batches need every source's stats.json (written by `data build`) at the model's rate;
    hand-written records (no stats.json) or another rate keep float32 batches, resampled as read."""
    rates = {"a": 16000, "b": 16000, "c": 48000}
    for name, rate in rates.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "stats.json").write_text(json.dumps({"sample_rate": rate, "written": 3}))
    (tmp_path / "d").mkdir()
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    assert built_at([a, b], 16000) and built_at([c], 48000)
    assert not built_at([a, c], 16000) and not built_at([a], 48000) and not built_at([a, d], 16000)
