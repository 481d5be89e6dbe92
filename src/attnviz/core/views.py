"""How a result shows itself (notebooks, ``to_html``, ``save``) without importing the display.

Results live in the analyses (``AttentionResult``, ``ScanResult``, ``AttributionResult``) and
in the display (``Report``); how they look is the display's business. The display layer
(``attnviz.display.notebook``, imported with ``attnviz``) registers one view function per
result class, by the class's dotted name, as IPython's ``for_type_by_name`` does, so that
neither side imports the other's classes. A view function returns a ``View``: an object
with ``page`` (a whole HTML document), ``png`` (bytes), ``snippet()`` (a notebook cell's HTML),
``bundle(text)`` (IPython's mimebundle) and ``save(path)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

VIEWS: dict[str, Callable] = {}  # "module.QualifiedName" -> view function


def register(dotted_name: str) -> Callable[[Callable], Callable]:
    """Decorator: the view function of the class named ``dotted_name`` (and subclasses)."""

    def decorate(view: Callable) -> Callable:
        VIEWS[dotted_name] = view
        return view

    return decorate


def view_of(result, **options):
    """The ``View`` of ``result``, from the nearest registered class in its MRO."""
    for cls in type(result).__mro__:
        view = VIEWS.get(f"{cls.__module__}.{cls.__qualname__}")
        if view is not None:
            return view(result, **options)
    raise TypeError(f"no view is registered for {type(result).__name__} "
                    "(the display registers them: import attnviz)")


class Displayable:
    """Notebook display and ``to_html``/``save`` for a result class with a short
    ``__repr__``; its look is the view registered for it (``register``)."""

    def _view(self):
        return view_of(self)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return self._view().bundle(repr(self))

    def _repr_html_(self) -> str:
        return self._view().snippet()

    def _repr_png_(self) -> bytes:
        return self._view().png

    def to_html(self) -> str:
        """A whole, self-contained HTML page of this result (what ``save("x.html")``
        writes): offline, no request leaves it."""
        return self._view().page

    def save(self, path: str | Path) -> Path:
        """Write this result to ``path``: ``.html`` (the page of ``to_html``) or ``.png``
        (the picture a notebook shows where scripts cannot run)."""
        return self._view().save(path)
