"""The one presentation module (flawmap.viz.text): values and terminal tables, used by CLI, bench, tune and report."""

from __future__ import annotations

import re
from pathlib import Path

from flawmap.viz.text import format_table, format_value

SRC = Path(__file__).resolve().parents[2] / "src" / "flawmap"


def test_format_value() -> None:
    assert format_value(None) == "n/a"  # a metric that cannot be computed, never 0
    assert format_value(0.98765) == "0.9877" and format_value(0.5, 3) == "0.500"
    assert format_value(1234.5678) == "1234.6" and format_value(1234.5678, 3, None) == "1234.568"
    assert format_value(("layer2", "layer3")) == "layer2+layer3" and format_value([1, 0.5]) == "1+0.5"
    assert format_value(3) == "3" and format_value(True) == "True" and format_value("x") == "x"


def test_format_table_aligns_columns_and_shows_missing_metrics() -> None:
    rows = [{"method": "patchcore", "image_auroc": 0.9, "fit_seconds": 123.456},
            {"method": "spade", "image_auroc": None}]
    assert format_table(rows, ("method", "image_auroc", "fit_seconds")).splitlines() == [
        "method     image_auroc  fit_seconds",
        "---------  -----------  -----------",
        "patchcore  0.9000       123.5      ",
        "spade      n/a          n/a        ",
    ]
    assert format_table([], ("a", "bb")).splitlines() == ["a  bb", "-  --"]


def test_no_other_module_formats_values_itself() -> None:
    own = re.compile(r"^\s*def (_?fmt|_?format_table|_?format_value)\(", re.M)
    hits = sorted(p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if own.search(p.read_text()))
    assert hits == ["viz/text.py"], hits
