"""Picture options checked before any work, so that a bad option fails before the first
file is written: the format a file's name or ``--image-format`` asks for (``image_format``),
the ``--title`` template (``check_title``), and every picture option at once
(``check_picture_options``: colormap, dpi, scale, title and font).
"""

from __future__ import annotations

from pathlib import Path

from attnviz.core.errors import InputError
from attnviz.pictures.colours import check_cmap, make_norm
from attnviz.pictures.fonts import use_font
from attnviz.pictures.images import check_dpi

IMAGE_FORMATS = ("png", "svg", "pdf", "jpg")
SUFFIX_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpg", ".jpeg": "jpg"}


def image_format(path: Path | None, fmt: str | None = None, option: str = "--plot") -> str:
    """The format to write: the file's suffix when it has one (it wins over ``fmt``),
    else ``fmt``, else png. An unknown suffix is refused: a file is what its name says."""
    if fmt is not None and fmt not in IMAGE_FORMATS:
        raise InputError(f"--image-format must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
    if path is not None and Path(path).suffix:
        suffix = Path(path).suffix.lower()
        if suffix not in SUFFIX_FORMATS:
            raise InputError(f"{option} {path}: attnviz cannot write {suffix} files; use .png, "
                             ".svg, .pdf or .jpg")
        return SUFFIX_FORMATS[suffix]
    return fmt or "png"


def check_title(template: str | None) -> None:
    """``--title`` may use {head}, {layer} and {tokens}; anything else is refused now,
    before a picture is drawn."""
    if template is not None:
        try:
            template.format(head=0, layer=0, tokens=1)
        except (KeyError, IndexError, ValueError) as e:
            raise InputError(f"--title {template!r}: only {{head}}, {{layer}} and {{tokens}} can be "
                             f"filled in ({e})") from None


def check_picture_options(cmap: str = "viridis", dpi: int = 100, scale: str = "sqrt",
                          title: str | None = None, font: str | None = None) -> None:
    """Every picture option checked before any work (and the font put to use)."""
    check_cmap(cmap)
    check_dpi(dpi)
    make_norm(scale)
    check_title(title)
    use_font(font)
