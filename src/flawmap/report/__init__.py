"""The benchmark report (``flawmap report``): what the tables hold (``select``, ``series``), the page
(``page``) and the folder it writes (``build``). Above ``bench`` (it reads its results); the drawing
primitives (heatmaps, plots, text tables) stay in ``flawmap.viz``."""

from __future__ import annotations

from .build import build_report

__all__ = ["build_report"]
