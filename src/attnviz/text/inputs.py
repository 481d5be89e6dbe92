"""Where the text comes from: an argument, standard input (``-``) or ``--file``."""

from __future__ import annotations

import sys
from pathlib import Path

from attnviz.core.errors import InputError


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


def strip_bom(text: str) -> str:
    """Drop a leading UTF-8 byte order mark (Windows editors write one): it is an encoding
    marker, not text, and would otherwise become a token of its own."""
    return text[1:] if text.startswith("\ufeff") else text


def stdin_bytes(what: str = "the text") -> bytes:
    """Everything piped to standard input, refusing a terminal (nothing was piped)."""
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError(f"'-' reads {what} from standard input, but nothing was piped in")
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    if isinstance(data, str):
        data = data.encode("utf-8", errors="surrogateescape")
    return data


def read_file_bytes(file: Path, option: str = "--file") -> bytes:
    if file.is_dir():
        raise InputError(f"{option} {file} is a directory")
    try:
        return file.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {option} {file}: {exc.strerror}") from None


def read_stdin() -> str:
    return strip_final_newline(decode_utf8(stdin_bytes(), "standard input"))


EMPTY_TEXT = "the text is empty: give some text, '-' to read stdin, or --file PATH"


def check_text(text: str) -> str:
    """``text``, or ``InputError`` when it is empty or only whitespace (spaces, newlines):
    nothing to look at, said the same way however the text came."""
    if not text:
        raise InputError(EMPTY_TEXT)
    if not text.strip():
        raise InputError(f"the text is only whitespace ({len(text)} "
                         f"character{'s' if len(text) != 1 else ''}): give some text, '-' to "
                         "read stdin, or --file PATH")
    return text


def read_text(text: str | None, file: Path | None) -> str:
    """The input text: the argument, ``-`` (or ``--file -``) for standard input, or a file.
    From stdin or a file, one final newline is dropped (use the positional argument to
    keep it); invalid UTF-8 is refused, not guessed at; a UTF-8 byte order mark is dropped."""
    if text is not None and file is not None:
        raise InputError("give the text or --file, not both")
    if file is not None and str(file) != "-":
        data = read_file_bytes(file)
        return check_text(strip_bom(strip_final_newline(decode_utf8(data, f"--file {file}"))))
    if file is not None or text == "-":
        return check_text(strip_bom(read_stdin()))
    if text is None:
        raise InputError("no text given: attnviz COMMAND \"some text\", '-' for stdin, or --file PATH")
    return check_text(strip_bom(text))
