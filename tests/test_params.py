"""Parameter text parsing and the unknown-parameter check live in flawmap.params, below the CLI; the
library never imports the CLI or argparse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flawmap.errors import ConfigError
from flawmap.params import check_param_names, parse_params, parse_value

SRC = Path(__file__).resolve().parents[1] / "src" / "flawmap"


def test_parse_values_and_params() -> None:
    assert parse_value("0.1") == 0.1 and parse_value("true") is True and parse_value("3") == 3
    assert parse_value("[layer2,layer3]") == ("layer2", "layer3") and parse_value("layer2") == "layer2"
    assert parse_params(["a=1", " b =[1,2]", "a=x"]) == {"a": "x", "b": (1, 2)}  # a later key wins
    assert parse_params(None) == {}
    for bad in ("novalue", "=3"):
        with pytest.raises(ConfigError, match="--grid expects KEY=VALUE"):
            parse_params([bad], "--grid")
    with pytest.raises(ConfigError, match="as YAML"):
        parse_value("[unclosed")


def test_unknown_names_list_the_allowed_ones() -> None:
    check_param_names("patchcore", ["k"], ["k", "sigma"])
    with pytest.raises(ConfigError, match=r"^x.yaml: patchcore: unknown parameter\(s\) \['kk'\]; allowed: k, sigma$"):
        check_param_names("patchcore", ["k", "kk"], ["k", "sigma"], where="x.yaml")


def test_every_entry_point_uses_the_one_check() -> None:
    from flawmap import get_detector
    from flawmap.bench.config import parse_config
    from flawmap.bench.tune import load_tune_config

    msg = r"patchcore: unknown parameter\(s\) \['coreset'\]; allowed: backbone, layers"
    with pytest.raises(ConfigError, match=msg):
        get_detector("patchcore", coreset=0.1)
    with pytest.raises(ConfigError, match=msg):
        get_detector("patchcore").set_params(coreset=0.1)
    with pytest.raises(ConfigError, match=msg):
        parse_config({"methods": {"patchcore": {"grid": {"coreset": [0.1]}}}})
    with pytest.raises(ConfigError, match=msg):
        load_tune_config(params={"coreset": 0.1})
    with pytest.raises(ConfigError, match="search: " + msg):
        load_tune_config(search={"coreset": [0.1, 0.2]})
    raising = re.compile(r"ConfigError\(.*unknown parameter")  # (a model file's schema check is ModelFileError)
    hits = sorted(p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if raising.search(p.read_text()))
    assert hits == ["params.py"], hits


def test_the_library_never_imports_the_cli_or_argparse() -> None:
    bad = re.compile(r"^\s*(import argparse|from argparse|from \.+cli import|from flawmap\.cli|import flawmap\.cli)", re.M)
    offenders = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if p.name != "cli.py" and bad.search(p.read_text())]
    assert offenders == []
