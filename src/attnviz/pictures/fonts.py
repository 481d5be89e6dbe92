"""Fonts of the pictures: the chosen font (``--font``), a CJK fallback for characters it
lacks, token labels made drawable with them, and text widths for the layout.

``use_font`` sets the font for every picture drawn afterwards (one choice per run);
``Fonts(texts)`` is what one picture needs to draw ``texts``, and ``context()`` puts it to
use while the picture is laid out and drawn.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from matplotlib import rc_context
from matplotlib.font_manager import FontProperties, findfont, fontManager
from matplotlib.ft2font import FT2Font

from attnviz.core.errors import InputError

_LABEL_CHARS = 14  # longer labels are cut with an ellipsis
# Families known to cover CJK, tried when a label has characters the main font lacks.
_CJK_FAMILIES = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
                 "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
                 "AR PL UMing CN", "IPAexGothic", "IPAGothic", "TakaoGothic", "Noto Sans SC",
                 "Noto Sans JP", "Microsoft YaHei", "SimHei", "MS Gothic", "PingFang SC",
                 "Hiragino Sans", "Arial Unicode MS")

_font_spec: str | None = None


def use_font(spec: str | None) -> None:
    """Draw text in ``spec``: a font file or an installed family name (None: matplotlib's
    default). Characters it lacks fall back to a CJK-capable font when one is installed."""
    global _font_spec
    if spec is not None:
        _resolve_family(spec)  # refuse a bad name now
    _font_spec = spec


@lru_cache(maxsize=8)
def _resolve_family(spec: str | None) -> str:
    from matplotlib import rcParams

    if spec is None:
        return FontProperties(family=rcParams["font.family"]).get_family()[0]
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            fontManager.addfont(str(path))
            return FontProperties(fname=str(path)).get_name()
        except (OSError, RuntimeError, ValueError) as e:
            raise InputError(f"--font {spec}: not a font file matplotlib can read ({e})") from None
    names = sorted({f.name for f in fontManager.ttflist})
    for name in names:
        if name.lower() == spec.lower():
            return name
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.5)
    hint = (f"; did you mean {', '.join(close)}?" if close
            else "; give a font file path or an installed family")
    raise InputError(f"--font {spec!r} is not an installed font{hint}")


@lru_cache(maxsize=32)
def _charmap(family: str) -> frozenset[int]:
    path = findfont(FontProperties(family=[family]), fallback_to_default=True)
    return frozenset(FT2Font(path).get_charmap())


@lru_cache(maxsize=1)
def cjk_families() -> tuple[str, ...]:
    """Installed fonts that cover Chinese/Japanese/Korean (first a known family, else
    what ``fc-list :lang=zh`` finds)."""
    available = {f.name for f in fontManager.ttflist}
    found = [name for name in _CJK_FAMILIES if name in available]
    if found or not shutil.which("fc-list"):
        return tuple(found[:1])
    for lang in ("zh", "ja", "ko"):
        try:
            listing = subprocess.run(["fc-list", f":lang={lang}", "file"], capture_output=True,
                                     text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ()
        for line in sorted(listing.splitlines()):
            path = line.split(":")[0].strip()
            if path.lower().endswith((".ttf", ".otf", ".ttc")):
                try:
                    fontManager.addfont(path)
                    return (FontProperties(fname=path).get_name(),)
                except (OSError, RuntimeError, ValueError):
                    continue
    return ()


class Fonts:
    """The font families for a picture whose texts include ``texts``: the chosen font,
    plus a CJK fallback when some character is missing from it and one is installed.
    ``label()`` makes a token label drawable with them."""

    def __init__(self, texts: Sequence[str] = ()):
        self.families = [_resolve_family(_font_spec)]
        charmap = _charmap(self.families[0])
        if any(ord(ch) not in charmap for text in texts for ch in text):
            for family in cjk_families():
                self.families.append(family)
                charmap = charmap | _charmap(family)
        self.charmap = charmap

    def context(self):
        return rc_context({"font.family": self.families})

    def label(self, label: str) -> str:
        return displayable(label, self.charmap)


def displayable(label: str, charmap: frozenset[int] | None = None) -> str:
    """``label`` with characters the plotting fonts cannot draw escaped as ``\\uXXXX``
    (never empty boxes or glyph warnings), cut to a length that fits beside a heatmap."""
    charmap = _charmap(_resolve_family(_font_spec)) if charmap is None else charmap
    out = "".join(
        ch if ord(ch) in charmap else (f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
        for ch in label
    )
    return out if len(out) <= _LABEL_CHARS else out[: _LABEL_CHARS - 1] + "…"


def text_width_in(texts: Sequence[str], font: float) -> float:
    """Width in inches of the widest of ``texts`` at ``font`` points."""
    from matplotlib.textpath import TextToPath

    if not texts:
        return 0.0
    prop = FontProperties(size=font)
    measure = TextToPath()
    return max(measure.get_text_width_height_descent(t, prop, ismath=False)[0] for t in texts) / 72
