"""``python -m attnviz``: the same program, under the same name."""

from attnviz.cli import main

main()
