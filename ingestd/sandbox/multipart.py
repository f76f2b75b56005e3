"""multipart/form-data (RFC 7578) and header parameters, parsed from a body already in memory.

`cgi` is gone from the standard library in 3.13 and `email` is lenient where a strict server is
not, so uploads are parsed here: boundaries are found with `bytes.find` and each part is copied
once, so a body is held at most about twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 2046 section 5.1.1: 1 to 70 characters, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")
# RFC 8187 ext-value: charset'language'value-chars.
_EXT_VALUE = re.compile(
    r"([A-Za-z0-9!#$%&+^_`{}~-]+)'([A-Za-z0-9-]*)'((?:%[0-9A-Fa-f]{2}|[A-Za-z0-9!#$&+.^_`|~-])*)"
)
_EXT_CHARSETS = {"utf-8": "utf-8", "iso-8859-1": "latin-1", "us-ascii": "ascii"}
# HTML5 form submission escapes only these three in a quoted filename; everything else is raw UTF-8.
_HTML5_ESCAPES = re.compile(r"%(22|0D|0A)", re.IGNORECASE)
_HTML5_CHARS = {"22": '"', "0D": "\r", "0A": "\n"}
_MAX_PART_HEADERS = 16 * 1024


class MultipartError(ValueError):
    """The body or a header is malformed; the message is safe to send back to the client."""


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None  # None: not a file part
    content_type: str | None  # lowercased media type without parameters; None when not sent
    data: bytes


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Split `type; name=value; name="quoted"` into the lowercased first item and its parameters.

    Parameter names are lowercased; quoted values keep their text, with `\\"` and `\\\\` unescaped.
    """
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, end = 0, len(rest)
    while i < end:
        while i < end and rest[i] in " \t;":
            i += 1
        if i >= end:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise MultipartError("header parameter without a value")
        name = rest[i:eq].strip().lower()
        if not _TOKEN.fullmatch(name):
            raise MultipartError("malformed header parameter name")
        i = eq + 1
        while i < end and rest[i] in " \t":
            i += 1
        if i < end and rest[i] == '"':
            text, i = _quoted(rest, i)
            while i < end and rest[i] in " \t":
                i += 1
            if i < end and rest[i] != ";":
                raise MultipartError("text after a quoted header parameter")
        else:
            stop = rest.find(";", i)
            stop = end if stop < 0 else stop
            text, i = rest[i:stop].strip(), stop
        if name in params:
            raise MultipartError(f"header parameter {name} given twice")
        params[name] = text
    return head.strip().lower(), params


def _quoted(text: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise MultipartError("unterminated quoted string in a header")


def _ext_value(value: str) -> str:
    match = _EXT_VALUE.fullmatch(value)
    if match is None:
        raise MultipartError("malformed filename*")
    codec = _EXT_CHARSETS.get(match.group(1).lower())
    if codec is None:
        raise MultipartError("unsupported charset in filename*")
    try:
        return unquote_to_bytes(match.group(3)).decode(codec)
    except UnicodeDecodeError:
        raise MultipartError("filename* does not match its charset") from None


def filename_from(params: dict[str, str]) -> str | None:
    """RFC 6266: `filename*` (RFC 8187/2231) wins over `filename` (HTML5 style raw UTF-8)."""
    if "filename*" in params:
        return _ext_value(params["filename*"])
    if "filename" in params:
        return _HTML5_ESCAPES.sub(lambda m: _HTML5_CHARS[m.group(1).upper()], params["filename"])
    return None


def _headers(raw: bytes) -> dict[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    headers: dict[str, str] = {}
    last = ""
    for line in text.split("\r\n") if text else []:
        if line[:1] in (" ", "\t") and last:
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not _TOKEN.fullmatch(name):
            raise MultipartError("malformed part header")
        if name in headers:
            raise MultipartError(f"part header {name} given twice")
        headers[name] = value.strip()
        last = name
    return headers


def _part(raw_headers: bytes, data: bytes) -> Part:
    headers = _headers(raw_headers)
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise MultipartError("part without Content-Disposition")
    kind, params = parse_params(disposition)
    if kind != "form-data" or "name" not in params:
        raise MultipartError("part is not form-data with a name")
    content_type = headers.get("content-type")
    media = parse_params(content_type)[0] if content_type is not None else None
    return Part(params["name"], filename_from(params), media, data)


def parse(body: bytes, boundary: str) -> list[Part]:
    """Every part of a multipart/form-data body, in order; raises MultipartError."""
    if not _BOUNDARY.fullmatch(boundary):
        raise MultipartError("invalid boundary")
    delimiter = b"--" + boundary.encode("ascii")
    separator = b"\r\n" + delimiter
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        first = body.find(separator)
        if first < 0:
            raise MultipartError("boundary not found in the body")
        pos = first + len(separator)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):
            return parts  # the close delimiter; an epilogue is ignored
        while body[pos : pos + 1] in (b" ", b"\t"):
            pos += 1
        if not body.startswith(b"\r\n", pos):
            raise MultipartError("malformed boundary line")
        pos += 2
        if body.startswith(b"\r\n", pos):
            headers_end, data_start = pos, pos + 2
        else:
            headers_end = body.find(b"\r\n\r\n", pos, pos + _MAX_PART_HEADERS)
            if headers_end < 0:
                raise MultipartError("part headers not terminated")
            data_start = headers_end + 4
        data_end = body.find(separator, data_start)
        if data_end < 0:
            raise MultipartError("closing boundary not found")
        parts.append(_part(body[pos:headers_end], body[data_start:data_end]))
        pos = data_end + len(separator)
