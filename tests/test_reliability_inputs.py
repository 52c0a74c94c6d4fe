"""Reliability on dirty inputs and safe loading.

- benchmarks/fuzz_inputs.py (kinds in benchmarks/fuzz_kinds.py) with 150 inputs: no crash, no hang, every input accepted or skipped
  by reason, specific malformed kinds skipped for their own reason, no escaping file written.
- No pickle is ever executed: a malicious `pytorch_model.bin` (proved live by plain unpickling)
  is refused by `clapcomp.load`, `load_hf_clap` and the LAION reader; a pickled record is a
  counted bad record in the grain pipeline.
- The LLM negative generator's API key (from the environment) reaches neither logs, stdout/stderr,
  exception messages, nor any file written, on its failure paths too (the success path is in
  tests/data/test_negatives.py), and the generator object does not hold it.
Tar members escaping the root are covered by tests/data/test_build.py and the fuzz kinds wds_*.
"""

import glob
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "fuzz_inputs.py")
N_FUZZ = 150

# Outcomes fixed by the input's construction, independent of the script's own expectation table.
EXPECTED = {
    "valid_wav": {"accepted"}, "valid_flac": {"accepted"}, "wds_valid": {"accepted"},
    "symlink_inside": {"accepted"}, "absolute_inside": {"accepted"}, "one_sample": {"accepted"},
    "random_bytes": {"corrupt"}, "truncated_data": {"truncated"}, "huge_declared_flac": {"too_long"},
    "budget_flac": {"decode_budget"},
    "nan_float_wav": {"non_finite"}, "rate_1hz": {"bad_sample_rate"}, "rate_10mhz": {"bad_sample_rate"},
    "silent": {"silent"}, "empty_file": {"empty_file"}, "too_large": {"too_large"},
    "missing_file": {"missing_file"}, "missing_path": {"bad_row"}, "nul_in_path": {"bad_row"},
    "absolute_outside": {"path_escapes_root"}, "dotdot_traversal": {"path_escapes_root"},
    "symlink_escape": {"path_escapes_root"}, "empty_caption": {"missing_caption"},
    "non_utf8_caption": {"non_utf8_text"}, "garbage_line": {"bad_row"}, "deep_json_row": {"bad_row"},
    "deep_json_caption": {"bad_row"}, "wds_traversal": {"unsafe_member"}, "wds_absolute": {"unsafe_member"},
    "wds_symlink": {"unsafe_member"}, "wds_deep_json": {"bad_row"},
    "rec_valid_flac": {"accepted"}, "rec_valid_pcm16": {"accepted"}, "rec_bad_magic": {"bad_record"},
    "rec_header_len_huge": {"bad_record"}, "rec_rate_extreme": {"bad_record"},
    "rec_random_flac": {"corrupt"}, "rec_pcm_odd_bytes": {"truncated"},
    "rec_declared_hours": {"too_long"}, "rec_no_caption": {"missing_caption"}, "rec_pickle": {"bad_record"},
    "rec_deep_json": {"bad_record"},
}  # fmt: skip


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fuzz") / "run")
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--n", str(N_FUZZ), "--seed", "0", "--out", out, "--stage-timeout", "240"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    with open(os.path.join(out, "summary.json")) as f:
        return proc, json.load(f), out


def test_fuzz_no_crash_no_hang_everything_accounted_for(fuzz):
    proc, s, _ = fuzz
    assert s["crashes"] == 0, s["crash_details"]
    assert s["hangs"] == 0, s["hang_details"]
    assert s["unaccounted"] == []
    assert s["tried"] == N_FUZZ == s["accepted"] + s["skipped"]
    for kind in s["kinds"]:
        assert kind["accepted"] + sum(kind["skipped"].values()) == kind["tried"], kind
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_fuzz_skip_reasons_are_specific(fuzz):
    _, s, _ = fuzz
    assert len(s["skipped_by_reason"]["build"]) >= 15 and len(s["skipped_by_reason"]["read"]) >= 5
    got = {k["kind"]: set(k["skipped"]) | ({"accepted"} if k["accepted"] else set()) for k in s["kinds"]}
    assert set(EXPECTED) <= set(got)  # N_FUZZ covers every kind
    wrong = {kind: sorted(got[kind]) for kind, want in EXPECTED.items() if got[kind] != want}
    assert wrong == {}
    assert s["mismatches"] == []


def test_fuzz_read_path_and_no_side_effects(fuzz):
    _, s, out = fuzz
    written = sum(k["accepted"] for k in s["kinds"] if k["family"] != "record")
    assert s["pipeline_over_built_records"] == {"accepted": written}  # the build keeps only readable records
    epoch = s["grain_epoch"]
    bad_records = sum(sum(k["skipped"].values()) for k in s["kinds"] if k["family"] == "record")
    assert epoch["metrics"]["examples"] == 8 * epoch["batches"] == 8 * (epoch["records"] // 8)
    assert sum(epoch["metrics"]["skipped"].values()) >= bad_records  # each bad position hit at least once
    assert not s["pickle_executed"] and not os.path.exists(os.path.join(out, "PICKLE_WAS_EXECUTED"))
    assert not glob.glob("/tmp/clapcomp_fuzz_evil*") and not glob.glob(os.path.join(out, "**", "evil*"), recursive=True)


# ----------------------------------------------------------------------------- no pickle executed


class _Payload:
    """Unpickling it creates `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_bins(tmp_path, marker):
    torch = pytest.importorskip("torch")
    state = {"text_model.embeddings.word_embeddings.weight": torch.zeros(2, 2), "x": _Payload(str(marker))}
    legacy, zipped = tmp_path / "legacy.bin", tmp_path / "zip.bin"  # torch's two formats
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    torch.save(state, zipped)
    for path in (legacy, zipped):  # the payloads are live: unrestricted unpickling runs them
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()
    return legacy, zipped


def test_malicious_pytorch_bin_is_refused_and_never_executed(tmp_path):
    import clapcomp
    from clapcomp.convert.hf import load_hf_clap
    from clapcomp.convert.laion import read_laion_checkpoint

    marker = tmp_path / "PWNED"
    for i, payload in enumerate(_malicious_bins(tmp_path, marker)):
        model = tmp_path / f"hf{i}"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "clap"}))
        (model / "pytorch_model.bin").write_bytes(payload.read_bytes())
        with pytest.raises(ValueError, match="[Ww]eights only load failed"):  # torch_load names the file and the fix
            clapcomp.load(model)
        with pytest.raises(ValueError, match="[Ww]eights only load failed"):
            load_hf_clap(model)
        with pytest.raises(ValueError, match=r"weights_only=True"):
            read_laion_checkpoint(payload)
        assert not marker.exists()


def test_pickled_record_is_a_counted_bad_record(tmp_path, monkeypatch):
    import jax
    from array_record.python.array_record_module import ArrayRecordWriter
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from clapcomp.data.options import DataConfig
    from clapcomp.data.pipeline import DeviceIterator, make_dataset
    from clapcomp.data.reasons import BadData
    from clapcomp.data.records import RecordSource, parse_record, write_records
    from clapcomp.tokenizer import Tokenizer

    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(str(marker)))
    pickle.loads(payload)  # live payload
    marker.unlink()
    writer = ArrayRecordWriter(str(tmp_path / "a-evil.array_record"), "group_size:1,uncompressed")
    writer.write(payload)
    writer.close()
    good = [
        {"key": f"k{i}", "audio": np.full(800, 0.1 * (i + 1), np.float32), "sample_rate": 16000, "captions": ["a dog"]}
        for i in range(4)
    ]
    write_records(str(tmp_path), good)
    source = RecordSource(sorted(glob.glob(str(tmp_path / "*.array_record"))))
    with pytest.raises(BadData) as e:
        parse_record(source[0])
    assert e.value.reason == "bad_record"
    hf = HFTokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "a": 2, "dog": 3}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    options = DataConfig(seed=0, batch_size=5, clip_samples=800, sample_rate=16000, num_epochs=1)
    ds = make_dataset(source, options, tokenizer=Tokenizer(hf, max_length=4), process_index=0, process_count=1)
    it = DeviceIterator(ds, jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), max_error_rate=1.0)
    batches = list(it)
    assert len(batches) == 1 and it.metrics["examples"] == 5
    assert it.metrics["skipped"]["bad_record"] >= 1  # the pickle, replaced by a good record
    firsts = {round(float(v), 2) for v in np.asarray(batches[0]["waveform"])[:, 0]}
    assert firsts <= {0.1, 0.2, 0.3, 0.4}  # only the good records' audio
    assert not marker.exists()


# ----------------------------------------------------------------------------- API key


SECRET = "sk-live-FUZZ-91c2e"


class _Server(BaseHTTPRequestHandler):
    """401 for captions with 'denied', 500 for 'flaky', otherwise one negative; logs the auth header."""

    seen: ClassVar[list] = []  # shared by the handler instances (one per request); each test subclasses

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(self.headers.get("Authorization"))
        assert len(type(self).seen) <= 20, "too many requests"
        caption = body["messages"][-1]["content"]
        status = 401 if "denied" in caption else 500 if "flaky" in caption else 200
        reply = json.dumps({"choices": [{"message": {"content": json.dumps([caption + " reversed"])}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply) if status == 200 else 0))
        self.end_headers()
        if status == 200:
            self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_llm_api_key_never_leaks_on_failure_paths(tmp_path, monkeypatch, caplog, capsys):
    from clapcomp.data import llm_negatives as N

    handler = type("H", (_Server,), {"seen": []})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1/chat/completions"
    monkeypatch.setenv("FUZZ_KEY", SECRET)
    manifest, out, cache = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "cache.json"
    manifest.write_text(
        "".join(
            json.dumps({"audio": "a.wav", "caption": c}) + "\n" for c in ("a dog barks", "access denied", "a flaky cat")
        )
    )
    try:
        with caplog.at_level(logging.DEBUG):
            assert (
                N.main(
                    [
                        "--manifest",
                        str(manifest),
                        "--out",
                        str(out),
                        "--llm-url",
                        url,
                        "--llm-model",
                        "m",
                        "--llm-key-env",
                        "FUZZ_KEY",
                        "--llm-cache",
                        str(cache),
                        "--llm-retries",
                        "1",
                        "--llm-backoff",
                        "0.01",
                        "--allow-http",
                    ]
                )
                == 0
            )
            llm = N.LLMNegatives(url, "m", api_key_env="FUZZ_KEY", retries=0, allow_http=True)
            with pytest.raises(RuntimeError) as denied:
                llm.generate("access denied", 2)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert handler.seen == [f"Bearer {SECRET}"] * 5  # ok, denied, flaky + 1 retry; then the direct call
    assert json.loads(out.read_text().splitlines()[0])["negatives"][0] == "a dog barks reversed"
    assert "HTTP 401" in caplog.text and "HTTP 500" in caplog.text
    captured = capsys.readouterr()
    texts = [
        caplog.text,
        captured.out,
        captured.err,
        str(denied.value),
        repr(denied.value.__context__),
        repr(vars(llm)),
    ]
    texts += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert not [t for t in texts if SECRET in t]
