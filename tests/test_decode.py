"""clapcomp.decode: the header budget refuses before decoding, the chunked read equals a whole read,
and a timeout stops the decoder itself (its thread ends, its memory is freed)."""

import io
import threading
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from clapcomp import decode
from clapcomp.data.reasons import BadData
from clapcomp.data.records import call_with_timeout
from clapcomp.decode import DecodeError, Header, Limits, check_header, read_audio


def header_bomb(seconds_held: float = 1.0, declared_seconds: int = 600) -> bytes:
    """A FLAC holding `seconds_held` of 8-channel 384 kHz audio whose STREAMINFO declares `declared_seconds`."""
    rate, ch = 384_000, 8
    buf = io.BytesIO()
    sf.write(buf, np.full((int(seconds_held * rate), ch), 0.25, np.float32), rate, format="FLAC", subtype="PCM_16")
    b = bytearray(buf.getvalue())
    packed = int.from_bytes(b[18:26], "big")  # STREAMINFO: 20 bits rate | 3 channels | 5 bps | 36 total samples
    b[18:26] = ((packed & ~((1 << 36) - 1)) | declared_seconds * rate).to_bytes(8, "big")
    return bytes(b)


def test_chunked_read_equals_a_whole_read(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "CHUNK_FRAMES", 1000)  # many chunks, one partial
    x = np.random.default_rng(0).uniform(-0.9, 0.9, (10_500, 3)).astype(np.float32)
    sf.write(tmp_path / "a.flac", x, 16_000, subtype="PCM_24")
    whole, rate = sf.read(tmp_path / "a.flac", dtype="float32", always_2d=True)
    reference = whole.mean(axis=1, dtype=np.float32)
    for source in (tmp_path / "a.flac", (tmp_path / "a.flac").read_bytes()):
        wave, got_rate = read_audio(source, name="a.flac")
        assert got_rate == rate == 16_000 and wave.dtype == np.float32
        np.testing.assert_array_equal(wave, reference)
    front, _ = read_audio(tmp_path / "a.flac", first_frames=2_500)  # decodes only the front window
    np.testing.assert_array_equal(front, reference[:2_500])
    assert read_audio(tmp_path / "a.flac", first_frames=10**9)[0].shape == (10_500,)


@pytest.mark.parametrize("fmt, subtype, channels", [("FLAC", "PCM_16", 1), ("WAV", "PCM_16", 1),
                                                     ("FLAC", "PCM_24", 1), ("FLAC", "PCM_16", 2)])  # fmt: skip
def test_int16_decode_is_the_float_decode_times_2_to_the_15(tmp_path, monkeypatch, fmt, subtype, channels):
    """Mono 16-bit files come back as int16 whose x / 2**15 (float64, exact) is libsndfile's whole float32 read,
    bit for bit, over several chunks; 24-bit and stereo files come back as the float32 read (channel mean)."""
    monkeypatch.setattr(decode, "CHUNK_FRAMES", 1000)
    x = np.random.default_rng(1).uniform(-1, 1, (10_500, channels)).astype(np.float32)
    x[:4, 0] = [-1.0, 1.0, 0.0, -1 / 32768]  # the int16 extremes and the smallest step
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, 16_000, format=fmt, subtype=subtype)
    reference = sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1, dtype=np.float32)
    wave, rate = read_audio(path.read_bytes(), name=path.name, int16=True)
    assert rate == 16_000 and wave.shape == (10_500,)
    if (subtype, channels) == ("PCM_16", 1):
        assert wave.dtype == np.int16 and wave.min() == -32768 and wave.max() == 32767
        assert (wave.astype(np.float64) / 32768).astype(np.float32).tobytes() == reference.tobytes()
    else:
        assert wave.dtype == np.float32 and wave.tobytes() == reference.tobytes()


def test_fast_flac_path_leaves_damaged_files_to_libsndfile():
    """Mono 16-bit FLAC bytes read as int16 go to dr_flac (miniaudio) first; a file it does not decode whole (cut,
    bytes flipped, the header bomb) ends as the libsndfile read ends: the same refusal, or the same samples."""
    pytest.importorskip("miniaudio")
    x = np.random.default_rng(2).uniform(-1, 1, 50_000).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 16_000, format="FLAC", subtype="PCM_16")
    good = buf.getvalue()
    flipped = bytearray(good)
    flipped[len(good) // 2 : len(good) // 2 + 64] = bytes(64)

    def outcome(data, int16):
        try:
            wave = read_audio(data, name="a.flac", int16=int16)[0]
        except DecodeError as e:
            return e.reason
        return (wave.astype(np.float64) / 32768).astype(np.float32).tobytes() if int16 else wave.tobytes()

    for data in (good, good[: len(good) // 2], bytes(flipped), good[:200], header_bomb()):
        assert outcome(data, True) == outcome(data, False)
    assert outcome(good[: len(good) // 2], True) == "truncated"


def test_the_header_bomb_is_refused_before_anything_is_allocated():
    bomb = header_bomb()
    assert len(bomb) < 8_000  # 1 s held; the 5-s file is 16 KB
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as e:
            read_audio(bomb, name="bomb.flac", target_rate=48_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.reason == "decode_budget"
    assert "230400000 frames x 8 channels" in e.value.detail and "6.9 GiB" in e.value.detail
    assert peak < 2**20  # nothing sized by the header was allocated
    # within the old limits (600 s, 16 channels, 2 GB) and readable: with the budget lifted, the decode
    # runs (what main did) and finds the stream shorter than its header
    with pytest.raises(DecodeError, match=r"^truncated: "):
        read_audio(bomb, Limits(max_samples=2**31), name="bomb.flac")


def test_budget_counts_decoded_and_resampled_samples():
    limits = Limits(max_samples=10_000)
    check_header(Header(frames=5_000, sample_rate=1_000, channels=2), limits)  # 10,000 decoded: at the budget
    with pytest.raises(DecodeError, match="decode_budget"):
        check_header(Header(frames=5_001, sample_rate=1_000, channels=2), limits)  # 10,002 decoded
    with pytest.raises(DecodeError, match="decode_budget"):  # 1,000 frames at 1 kHz = 48,000 at 48 kHz
        check_header(Header(frames=1_000, sample_rate=1_000, channels=1), limits, target_rate=48_000)
    with pytest.raises(DecodeError, match="too_long"):
        check_header(Header(frames=601_000, sample_rate=1_000, channels=1), Limits())


def test_a_timeout_stops_the_decoder_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "CHUNK_FRAMES", 8)  # 37,500 chunks, ~2 s: far slower than the bounds below
    sf.write(tmp_path / "long.wav", np.zeros((300_000, 2), np.float32) + 0.1, 48_000)
    outcome = []

    def decode_and_record():
        try:
            outcome.append(read_audio(tmp_path / "long.wav", Limits(timeout_s=0.2))[0].shape)
        except DecodeError as e:
            outcome.append(e.reason)

    before = threading.active_count()
    with pytest.raises(BadData, match="^timeout"):  # the caller's thread guard gives up first ...
        call_with_timeout(decode_and_record, 0.01)
    deadline = time.monotonic() + 5.0
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    # ... and the abandoned decoder stopped itself at its own bound instead of decoding the whole file
    assert threading.active_count() == before and outcome == ["timeout"]
    with pytest.raises(DecodeError, match=r"timeout: decoded \d+ of 300000 frames"):
        read_audio(tmp_path / "long.wav", Limits(timeout_s=0.01))


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [("x.txt", b"abc", "unsupported_format"), ("x.wav", b"", "empty_file"), ("x.wav", b"RIFFjunk", "corrupt")],
)
def test_refusals_are_named(name, data, reason):
    with pytest.raises(DecodeError) as e:
        read_audio(data, name=name)
    assert e.value.reason == reason and reason in decode.REASONS


def test_every_decode_reason_is_in_the_reason_table():
    from clapcomp.data.reasons import BUILD_REASONS

    assert set(decode.REASONS) <= set(BUILD_REASONS)
