"""The config schema (clapcomp/train/config.py), experiment arguments, and `clapcomp train --help`."""

import dataclasses
import re
import time

import pytest
from repo_configs import load_config  # tests/repo_configs.py

from clapcomp.audio import AudioConfig
from clapcomp.models.configs import ClapConfig
from clapcomp.train import config as config_lib
from clapcomp.train import loop
from clapcomp.train.config import defaults, parse_arg, tokenizer_json


def _flat(d, prefix=""):
    for k, v in d.items():
        yield from (_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)])


def test_defaults_hold_every_model_field():
    got = dict(_flat(defaults().model.to_dict()))
    want = dict(_flat(ClapConfig().to_dict()))
    assert (
        got == want
        and len(want)
        == sum(
            len(dataclasses.fields(t))
            for t in (ClapConfig, *(type(getattr(ClapConfig(), n)) for n in ("audio", "htsat", "text", "cnn")))
        )
        - 4
    )


def test_parse_arg():
    assert parse_arg("loss=compa,seed=3", loss="plain", seed=0).to_dict() == {"loss": "compa", "seed": 3}
    assert parse_arg("modular", loss="plain", seed=0).to_dict() == {"loss": "modular", "seed": 0}
    assert parse_arg(None, loss="plain").loss == "plain"
    assert parse_arg("fast=true", fast=False).fast is True
    with pytest.raises(ValueError, match=r"unknown key 'sed'; known: \['loss', 'seed'\]"):
        parse_arg("sed=1", loss="plain", seed=0)
    with pytest.raises(ValueError, match="expected true or false"):
        parse_arg("fast=maybe", fast=False)


def test_missing_tokenizer_package_says_what_to_install():
    with pytest.raises(ImportError, match=r"pip install no-such-tokenizer-pkg .*--config.tokenizer"):
        tokenizer_json("no_such_tokenizer_pkg")


def _help_rows(out: str) -> dict:
    """`clapcomp train --help` -> {"--config.FIELD=VALUE": "[class] meaning"} (a long flag wraps its row)."""
    klass = "|".join(map(re.escape, config_lib.CLASSES))
    rows, flag = {}, None
    for line in out.splitlines():
        if m := re.fullmatch(rf"  (--config\.\S.*?)(?: +(\[(?:{klass})\] .*))?", line):
            flag = m.group(1)
            rows[flag] = m.group(2) or ""
        elif flag and not rows[flag] and re.fullmatch(rf" +\[(?:{klass})\] .*", line):
            rows[flag] = line.strip()
    return rows


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_lists_flags_and_every_field_with_its_value_class_and_meaning(helpers, capsys, flag):
    assert loop.main([flag]) == 0
    out = capsys.readouterr().out
    rows = _help_rows(out)
    assert "--workdir" in out and rows["--config.model.htsat.drop_path_rate=0.1"].startswith("[training] ")
    assert rows["--config.init.kind='auto'"].startswith("[resumable] weights to start from")
    # one row per field of the table, each with the class and meaning the table gives it
    assert len(rows) == len(config_lib.FIELDS) == len(list(_flat(defaults().to_dict())))
    for field, (klass, meaning) in config_lib.FIELDS.items():
        [row] = [v for k, v in rows.items() if k.startswith(f"--config.{field}=")]
        assert row == f"[{klass}] {meaning}", field
    config = str(helpers.REPO / "configs" / "demo.py") + ":loss=compa,seed=2"
    assert (
        loop.main([flag, f"--config={config}", "--config.model.htsat.drop_path_rate=0.2", "--config.freeze=audio"]) == 0
    )
    rows = _help_rows(capsys.readouterr().out)
    for line in (
        "--config.loss='compa'",
        "--config.seed=2",
        "--config.model.htsat.drop_path_rate=0.2",
        "--config.freeze='audio'",
        "--config.model.text.family='bert'",
        "--config.data.num_negatives=3",
    ):
        assert line in rows, line


def test_every_field_has_one_class_and_a_meaning():
    assert set(config_lib.FIELDS) == {k for k, _ in _flat(defaults().to_dict())}
    for field, (klass, meaning) in config_lib.FIELDS.items():
        assert klass in config_lib.CLASSES and meaning.strip(), field
    # what models/ and the resume check read from the table
    assert config_lib.fields_of("front end", "model.audio.") == {f.name for f in dataclasses.fields(AudioConfig)} - {
        "fusion"
    }
    assert all(k.startswith("model.") for k in config_lib.FIELDS if config_lib.FIELDS[k][0] in ("architecture", "head",
               "front end", "training"))  # fmt: skip


def test_overrides_are_parsed_as_ml_collections_config_flags_parses_them(helpers, tmp_path):
    """The reference: ml_collections' own `--config.FIELD=VALUE` flags on the same file (how `clapcomp
    train` read its command line before `load`), for a value of every field type."""
    from absl import flags
    from ml_collections import config_flags

    overrides = ["model.text.dropout=0.3", "total_steps=7", "fsdp_text=true", "model.htsat.depths=(1, 3)",
                 "model.audio.feature_range=(-1.0, 2.5)", "init.path=/tmp/x:y", "optimizer.lr=3e-4",
                 "model.audio.peak_normalize=1", "data.workers=0x10"]  # fmt: skip
    path = helpers.REPO / "configs" / "tiny.py"
    argv = ["prog", f"--config={path}:compa", *(f"--config.{o}" for o in overrides)]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
    fv(argv)
    want = fv.config.to_dict()
    got = config_lib.load(f"{path}:compa", overrides=overrides)
    assert got.to_dict() == {**want, "overrides": got.overrides}
    assert got.model.htsat.depths == (1, 3) and got.data.workers == 16 and got.fsdp_text is True
    # a list field, which ml_collections refused to override, takes a Python literal
    assert config_lib.load(path, overrides=["evaluators=[{'name': 'compa'}]"]).evaluators == [{"name": "compa"}]
    # and the command line splits into the same file and overrides
    assert config_lib.split_argv(argv[1:] + ["--workdir", "w", "--noconfig.fsdp_text", "--config.seed", "4"]) == (
        f"{path}:compa",
        [*overrides, "fsdp_text=false", "seed=4"],
        ["--workdir", "w"],
    )


def test_unknown_keys_are_errors_naming_the_closest_fields(helpers, tmp_path):
    tiny = helpers.REPO / "configs" / "tiny.py"
    with pytest.raises(ValueError, match=r"override 'data.nonexistent_key', which is no config field; data has "
                       r"batch_size, num_negatives, num_positives, tower_cache, train, weights, workers"):  # fmt: skip
        config_lib.load(tiny, overrides=["data.nonexistent_key=3"])
    with pytest.raises(ValueError, match=r"'model.text.dropuot'.*closest are model.text.dropout, "):
        config_lib.load(tiny, overrides=["model.text.dropuot=0.1"])
    with pytest.raises(ValueError, match=r"'lr', which is no config field; the closest are optimizer.lr"):
        config_lib.load(tiny, overrides=["lr=1"])
    with pytest.raises(ValueError, match=r"total_steps='1.5': expected a int"):
        config_lib.load(tiny, overrides=["total_steps=1.5"])
    with pytest.raises(ValueError, match=r"expected key=value"):
        config_lib.load(tiny, overrides=["total_steps"])
    # a config file that adds a field (a typo in an experiment file) is refused the same way
    typo = tmp_path / "typo.py"
    typo.write_text("from clapcomp.train.config import defaults\n\n\ndef get_config():\n    c = defaults()\n"
                    "    c.optimizer.warmup = 10\n    return c\n")  # fmt: skip
    with pytest.raises(ValueError, match=rf"{typo} sets 'optimizer.warmup'.*closest are optimizer.warmup_steps"):
        config_lib.load(typo)


def test_the_train_command_refuses_an_unknown_key_at_once(helpers, tmp_path, capsys):
    t0 = time.perf_counter()
    code = loop.main([f"--config={helpers.REPO / 'configs' / 'tiny.py'}:compa", f"--workdir={tmp_path / 'w'}",
                      "--config.data.nonexistent_key=3"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "'data.nonexistent_key', which is no config field" in err, err
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "w").exists()


def test_overrides_record_what_was_set_even_to_its_default():
    """`overrides`: the file's changes to defaults() plus every key given, a default value included."""
    c = load_config("compa_stage2", None, "model.text.dropout=0.1", "log_every=50", "model.audio=" + repr(
        {"clip_seconds": 10.0}))  # fmt: skip
    default = defaults()
    assert (c.model.text.dropout, c.log_every) == (default.model.text.dropout, default.log_every)  # the defaults
    assert c.overrides == sorted({"data.num_negatives", "eval_every", "loss", "seed",  # configs/compa_stage2.py
                                  "model.text.dropout", "log_every", *(f"model.audio.{f.name}" for f in
                                  dataclasses.fields(AudioConfig))})  # fmt: skip
    assert load_config("compa_stage2").overrides == ["data.num_negatives", "eval_every", "loss", "seed"]


def test_pod_config_sets_one_remat_policy_for_both_towers():
    """configs/clap_htsat_roberta.py:remat=... (docs/tpu-pods.md's v5e-pod setting) reaches both towers' configs."""
    from clapcomp.train import state as state_lib

    cfg = state_lib.model_config(load_config("clap_htsat_roberta", "dtype=bfloat16,remat=nothing_saveable"))
    assert (cfg.htsat.remat, cfg.text.remat, cfg.dtype) == ("nothing_saveable", "nothing_saveable", "bfloat16")
    default = state_lib.model_config(load_config("clap_htsat_roberta"))
    assert (default.htsat.remat, default.text.remat) == ("none", "none")
