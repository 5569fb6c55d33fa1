"""MkDocs hook: pages whose tables and API entries are generated from the code at build time.

Markers (HTML comments, each alone on its line, so a page still reads correctly on GitHub):

* ``<!-- params: NAME -->``: the hyperparameters of detector NAME, from the same source as
  ``flawmap list --params NAME`` (``detector_class(NAME).default_params()``): name, paper default, the values
  its validation allows (read from the error message ``validate_params()`` gives for a value far out of
  range), and the comment written beside the parameter in the detector's signature.
* ``<!-- doc: NAME -->``: the documentation of the module that defines detector NAME (the paper's idea in its
  symbols), as written in the code.
* ``<!-- presets -->``: every preset (``flawmap list --presets``): its description, what it changes per
  method, its cost.
* ``<!-- api: DOTTED.NAME -->``: a mkdocstrings entry for a public name, wherever its code lives now
  (``flawmap.get_detector`` -> ``::: flawmap.<its module>.get_detector``), so the page survives code moving.
* ``<!-- api-module: MODULE -->``: one entry per name in ``MODULE.__all__``.

Only public API is used: ``flawmap.list_detectors``, ``flawmap.get_detector``, ``BaseDetector.default_params``,
``validate_params``, ``flawmap.presets``.
"""

from __future__ import annotations

import importlib
import inspect
import io
import re
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

# this checkout's code, whatever flawmap is installed elsewhere
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

_MARKER = re.compile(r"^[ \t]*<!--\s*(params|presets|doc|api|api-module)\s*:?\s*([\w.\-]*)\s*-->[ \t]*$", re.M)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return _MARKER.sub(lambda m: _expand(m.group(1), m.group(2)), markdown)


def _expand(kind: str, arg: str) -> str:
    if kind == "params":
        return params_table(arg)
    if kind == "presets":
        return presets_table()
    if kind == "doc":
        return method_doc(arg)
    if kind == "api":
        return api_entry(arg)
    module = importlib.import_module(arg)
    return "\n\n".join(api_entry(f"{arg}.{name}") for name in module.__all__)


# ---- API entries ------------------------------------------------------------------------------------
def api_entry(dotted: str) -> str:
    module_name, _, name = dotted.rpartition(".")
    obj = getattr(importlib.import_module(module_name), name)
    home = getattr(obj, "__module__", module_name)
    return f"::: {home}.{getattr(obj, '__qualname__', name)}\n"


# ---- parameter tables ---------------------------------------------------------------------------------
def _detector_class(name: str) -> type:
    import flawmap

    if name not in flawmap.list_detectors():
        raise ValueError(f"<!-- params: {name} -->: no detector {name!r}; registered: {flawmap.list_detectors()}")
    return type(flawmap.get_detector(name))


def _signature_comments(cls: type) -> dict[str, str]:
    """{parameter: the comment written after it in ``__init__``'s signature} ({} when the source is not there)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls.__init__))
        tokens = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (OSError, TypeError, tokenize.TokenError, IndentationError):
        return {}
    out: dict[str, str] = {}
    name, depth, prev = None, 0, None
    for tok in tokens:
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
            if depth == 0:
                break  # end of the signature
        elif tok.type == tokenize.NAME and depth == 1 and prev is not None and prev.string in ("(", ",", "*"):
            name = tok.string
        elif tok.type == tokenize.COMMENT and name and depth == 1:
            out.setdefault(name, tok.string.lstrip("#").strip())
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            prev = tok
    return out


def _allowed(name: str, param: str, default: Any) -> str:
    """What the detector's validation accepts for ``param``, read from its own error message."""
    import flawmap
    from flawmap.errors import ConfigError

    if isinstance(default, bool):
        return "true, false"
    if isinstance(default, str):
        probes: list[Any] = ["\u2400not-a-value"]
    elif isinstance(default, int):
        probes = [-10**9, 10**9]
    elif isinstance(default, float):
        probes = [-1e30, 1e30]
    else:
        return ""
    found: list[str] = []
    for probe in probes:
        try:
            flawmap.get_detector(name, **{param: probe}).validate_params()
        except ConfigError as exc:
            msg = str(exc)
            if param not in msg:
                continue  # another parameter's check (not this one's range)
            m = re.search(r"allowed(?: values)?: (.+?)(?:\s*\(|$)", msg)
            if m:
                found.append(m.group(1).strip().rstrip(";"))
            elif "must be odd" in msg or "integer" in msg:
                found.append(msg.split(":", 1)[-1].strip())
        except Exception:  # noqa: BLE001 - a probe that breaks something else says nothing about the range
            continue
    text = "; ".join(dict.fromkeys(found))
    if isinstance(default, int) and not isinstance(default, bool) and text:
        text += " (integer)"
    return text


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        v = list(v)
    return f"`{v!r}`".replace("|", "\\|")


def method_doc(name: str) -> str:
    cls = _detector_class(name)
    doc = inspect.getdoc(inspect.getmodule(cls)) or inspect.getdoc(cls) or ""
    return "```text\n" + doc.strip() + "\n```\n"


def params_table(name: str) -> str:
    cls = _detector_class(name)
    defaults = cls.default_params()
    comments = _signature_comments(cls)
    rows = ["| parameter | default (paper) | allowed | what it is |", "|---|---|---|---|"]
    for k, v in defaults.items():
        allowed = _allowed(name, k, v).replace("|", "\\|")
        note = comments.get(k, "").replace("|", "\\|")
        rows.append(f"| `{k}` | {_fmt(v)} | {allowed} | {note} |")
    transform = ", ".join(f"{k} {v}" for k, v in dict(cls.paper_transform).items())
    return ("\n".join(rows) + f"\n\nPaper preprocessing: {transform} (`flawmap list --params {name}` prints the same "
            "defaults; this table is generated from the code when the documentation is built).\n")


def presets_table() -> str:
    import flawmap
    from flawmap.presets import get_preset, list_presets

    rows = ["| preset | what it is | what it changes, per method | cost |", "|---|---|---|---|"]
    for pname in list_presets():
        p = get_preset(pname)
        changes = "<br>".join(f"**{m}**: {p.changes(m)}" for m in flawmap.list_detectors()
                              if p.params_for(m) or p.preprocessing_for(m)) or "nothing"
        rows.append(f"| `{pname}` | {p.description} | {changes} | {p.cost} |".replace("\n", " "))
    return "\n".join(rows) + "\n\nGenerated from `flawmap.presets` when the documentation is built (`flawmap list --presets`).\n"
