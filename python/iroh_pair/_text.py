"""Text from a peer made safe for a terminal.

A peer chooses its device name, the reason text of its Reject messages and the bytes of its
messages. Printed raw, such text could carry terminal escape sequences (``ESC ] 0 ; title BEL``
sets the window title, ``ESC [ 2 J`` clears the screen, some terminals even answer queries into
the input), C1 controls (``U+009B`` is a one-character CSI), bidi overrides that make
``evil\\u202egnp.exe`` read as something else, or line breaks that forge lines of output.
:func:`sanitize_for_terminal` shows every such character as a visible escape and keeps all
other Unicode text as it is.
"""

from __future__ import annotations

import unicodedata

__all__ = ["sanitize_for_terminal", "is_unsafe_char"]

#: Invisible characters that reorder text: bidi embeddings, overrides, isolates and marks.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
#: Format characters kept: zero-width (non-)joiner, needed by emoji sequences and many scripts.
_KEPT_FORMAT = frozenset("\u200c\u200d")


def is_unsafe_char(c: str) -> bool:
    """Whether the character ``c`` must not reach a terminal as it is: controls (C0, DEL, C1,
    including ``\\n`` and ``\\t``), bidi controls, other invisible format characters (except
    ZWJ/ZWNJ), lone surrogates, and the line/paragraph separators.

    >>> is_unsafe_char("\\x1b"), is_unsafe_char("\\u202e"), is_unsafe_char("é")
    (True, True, False)
    """
    if c in BIDI_CONTROLS:
        return True
    cat = unicodedata.category(c)
    if cat == "Cf":
        return c not in _KEPT_FORMAT
    return cat in ("Cc", "Cs", "Zl", "Zp")


def _escape(c: str) -> str:
    o = ord(c)
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def sanitize_for_terminal(text: str, max_chars: int | None = None) -> str:
    """``text`` (from a peer) with every unsafe character (:func:`is_unsafe_char`) shown as a
    visible escape (``\\x1b``, ``\\u202e``), cut to ``max_chars`` characters (ending in ``…``)
    when given. The result contains no control character at all, not even a newline, so it can
    neither move the cursor nor start a line of its own.

    >>> sanitize_for_terminal("evil\\x1b]0;pwned\\x07\\u202e name")
    'evil\\\\x1b]0;pwned\\\\x07\\\\u202e name'
    >>> sanitize_for_terminal("Zoë's phone 📱")
    "Zoë's phone 📱"
    """
    s = "".join(_escape(c) if is_unsafe_char(c) else c for c in text)
    if max_chars is not None and len(s) > max_chars:
        s = s[: max(0, max_chars - 1)] + "…"
    return s
