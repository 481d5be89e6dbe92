"""Where the text comes from: an argument, standard input (``-``) or ``--file``."""

from __future__ import annotations

import sys
from pathlib import Path

from attnviz.errors import InputError


def decode_utf8(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{source} is not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None


def strip_final_newline(text: str) -> str:
    """Drop the one newline that ``echo`` and text editors put at the end."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def read_text(text: str | None, file: Path | None) -> str:
    """The input text. From stdin or a file, one final newline is dropped (use the
    positional argument to keep it); invalid UTF-8 is refused, not guessed at."""
    if text is not None and file is not None:
        raise InputError("give the text or --file, not both")
    if file is not None:
        if file.is_dir():
            raise InputError(f"--file {file} is a directory")
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read --file {file}: {exc.strerror}") from None
        return strip_final_newline(decode_utf8(data, f"--file {file}"))
    if text == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("'-' reads the text from standard input, but nothing was piped in")
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        if isinstance(data, str):
            data = data.encode("utf-8", errors="surrogateescape")
        return strip_final_newline(decode_utf8(data, "standard input"))
    if text is None:
        raise InputError("no text given: attnviz COMMAND \"some text\", '-' for stdin, or --file PATH")
    return text
