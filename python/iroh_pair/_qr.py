"""QR codes of a pairing code: a terminal rendering (half blocks), SVG and PNG, made with
`segno <https://pypi.org/project/segno/>`_ (pure Python). Example::

    text = terminal("legal-winner-thank.mfrggzdfmztwq2lknnwg23tpoa.endpointaaaa")
    print(text, end="")          # a QR code a phone scans from the terminal

The code is encoded verbatim (byte mode) with error correction level L, the smallest symbol
(segno raises the level for free when the text fits the same version); a full code for the
internet is ~100-200 characters, so a large correction level would cost several versions.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a QR code is made: `import iroh_pair` does not pay for it
    import segno

__all__ = ["make", "terminal", "svg", "png", "TERMINAL_BORDER"]

#: Quiet zone of the terminal rendering, in modules: 2 (as ``qrencode -t UTF8``), drawn in the
#: light colour so the dark terminal background around it does not touch the symbol.
TERMINAL_BORDER = 2
#: Half blocks for (top module, bottom module), ``True`` = light. Light modules are the drawn
#: ones (the terminal's text colour), as ``qrencode -t UTF8`` does: right on the usual light
#: text on a dark background. No colour codes, so the output is plain text wherever it goes.
_BLOCKS = {(True, True): "\u2588", (True, False): "\u2580", (False, True): "\u2584", (False, False): " "}


def make(text: str) -> segno.QRCode:
    """The QR code of ``text`` (not Micro QR; error correction L or better at the same size)."""
    import segno

    return segno.make_qr(text, error="l")


def terminal(text: str, *, border: int = TERMINAL_BORDER) -> str:
    """``text`` as lines of half-block characters (two module rows per line) with a quiet zone
    of ``border`` modules (drawn light, like the light modules)."""
    rows = [[not dark for dark in row] for row in make(text).matrix_iter(scale=1, border=border)]
    if len(rows) % 2:
        rows.append([True] * len(rows[0]))  # the last half line: quiet zone below
    lines = []
    for top, bottom in zip(rows[::2], rows[1::2], strict=True):
        line = "".join(_BLOCKS[pair] for pair in zip(top, bottom, strict=True))
        lines.append(line)
    return "".join(line + "\n" for line in lines)


def svg(text: str, *, scale: int = 4, border: int = 4) -> bytes:
    """``text`` as an SVG document (UTF-8), ``scale`` user units per module."""
    buf = io.BytesIO()
    make(text).save(buf, kind="svg", scale=scale, border=border)
    return buf.getvalue()


def png(text: str, *, scale: int = 4, border: int = 4) -> bytes:
    """``text`` as a PNG image (black on white), ``scale`` pixels per module."""
    buf = io.BytesIO()
    make(text).save(buf, kind="png", scale=scale, border=border)
    return buf.getvalue()
