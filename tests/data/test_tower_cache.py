"""`clapcomp.data.tower_cache`: clip digests, rows found by clip content, save / load without pickle."""

import hashlib

import numpy as np
import pytest

from clapcomp.data.tower_cache import TowerCache, TowerCacheMiss, waveform_digest

TOWER = {"audio_tower": "cnn", "weights_sha256": "ab" * 32, "front_end": {"sample_rate": 8000}}


def test_digest_is_sha256_of_the_float32_samples():
    wave = np.linspace(-1, 1, 1000)  # float64: hashed as the float32 the tower sees
    assert waveform_digest(wave) == hashlib.sha256(wave.astype("<f4").tobytes()).hexdigest()
    assert waveform_digest(wave) == waveform_digest(wave.astype(np.float32))
    assert waveform_digest(np.append(wave, 0.0)) != waveform_digest(wave)  # a zero more is another clip
    assert waveform_digest(wave[::-1]) != waveform_digest(wave)


def test_rows_are_found_by_clip_and_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (500, 800, 800)]
    rows = rng.standard_normal((3, 6)).astype(np.float32)
    cache = TowerCache(TOWER)
    for clip, row in zip(clips, rows, strict=True):
        cache.add(waveform_digest(clip), row)
    cache.add(waveform_digest(clips[0]), rows[1])  # a clip already held keeps its first row
    assert len(cache) == 3
    cache.save(tmp_path / "c", records="somewhere", seconds=1.5)
    loaded = TowerCache.load(tmp_path / "c")
    assert loaded.tower == TOWER and len(loaded) == 3
    for clip, row in zip(clips, rows, strict=True):
        np.testing.assert_array_equal(loaded.lookup(clip.copy(), what="clip"), row)
    with pytest.raises(TowerCacheMiss, match=r"record 'k9' \(799 samples\) has no row .* cropped at random"):
        loaded.lookup(clips[1][:-1], what="record 'k9'")
    with pytest.raises(ValueError, match="row of shape"):
        loaded.add("x", np.zeros(5))


def test_load_refuses_missing_or_damaged_caches(tmp_path):
    with pytest.raises(FileNotFoundError, match="no audio-tower cache"):
        TowerCache.load(tmp_path)
    cache = TowerCache(TOWER)
    cache.add("d1", np.ones(4))
    cache.add("d2", np.zeros(4))
    cache.save(tmp_path)
    (tmp_path / "digests.txt").write_text("d1\n")
    with pytest.raises(ValueError, match="disagree"):
        TowerCache.load(tmp_path)
    np.save(tmp_path / "pooled.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (tmp_path / "digests.txt").write_text("d1\nd2\n")
    with pytest.raises(ValueError, match="pickle"):  # an object array is never unpickled
        TowerCache.load(tmp_path)
