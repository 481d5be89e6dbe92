"""``python -m attnviz``: the same program, under the same name."""

from attnviz.cli import app

app(prog_name="attnviz")
