"""The pairing code as a QR code (`iroh-pair host`, `HostedPairing.qr_*`) and `iroh-pair join -`,
in subprocesses on loopback. The printed QR code is read back from its half-block characters and
decoded by a real decoder (zxing-cpp, the test extra)."""

from __future__ import annotations

import asyncio
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np
import pytest
import zxingcpp
from helpers import open_local_node
from test_cli import CLI, CODE_RE, QUESTION_RE, PtyProc, line, run, start

from iroh_pair.protocol import PairingCode

#: The terminal rendering's characters: (top module, bottom module), True = dark. Light modules
#: are the drawn ones (the terminal's text colour), as in `qrencode -t UTF8`.
BLOCKS = {"\u2588": (False, False), "\u2580": (False, True), "\u2584": (True, False), " ": (True, True)}
QR_CHARS = set("\u2588\u2580\u2584")


def matrix_from_blocks(text: str) -> list[list[bool]]:
    """The module matrix (True = dark) of the QR code in ``text``: every line made only of
    half-block characters and spaces (and at least one block) is two module rows."""
    rows: list[list[bool]] = []
    for ln in text.splitlines():
        if not ln or set(ln) - set(BLOCKS) or not set(ln) & QR_CHARS:
            continue
        rows.append([BLOCKS[c][0] for c in ln])
        rows.append([BLOCKS[c][1] for c in ln])
    assert rows, f"no QR code in {text!r}"
    assert len({len(r) for r in rows}) == 1, "the QR code's lines differ in width"
    return rows


def decode(matrix: list[list[bool]], scale: int = 4) -> list[str]:
    """What zxing-cpp reads in ``matrix`` drawn black on white, ``scale`` pixels a module (no
    inverted reading: the polarity must be right)."""
    img = np.array([[0 if dark else 255 for dark in row] for row in matrix], dtype=np.uint8)
    img = np.kron(img, np.ones((scale, scale), dtype=np.uint8))
    found = zxingcpp.read_barcodes(img, formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode),
                                    try_invert=False)
    return [r.text for r in found]


def png_matrix(data: bytes) -> list[list[bool]]:
    """Pixels (True = dark) of a 1-bit grayscale or palette PNG, as segno writes it."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, palette = 8, b"", None
    width = height = depth = ctype = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"PLTE":
            palette = [body[i:i + 3] for i in range(0, len(body), 3)]
        elif kind == b"IDAT":
            idat += body
    assert depth == 1 and ctype in (0, 3), (depth, ctype)
    raw = zlib.decompress(idat)
    stride = (width + 7) // 8
    rows = []
    prev = bytes(stride)
    for y in range(height):
        ftype, line_ = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # undo the row filter (PNG spec §9; 1 byte per pixel group)
            a, b, c = line_[i - 1] if i else 0, prev[i], prev[i - 1] if i else 0
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2}.get(ftype)
            if pred is None:
                assert ftype == 4, ftype
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            line_[i] = (line_[i] + pred) & 0xFF
        prev = bytes(line_)
        bits = [(line_[x // 8] >> (7 - x % 8)) & 1 for x in range(width)]
        if ctype == 3:
            assert palette is not None
            rows.append([palette[b] == b"\x00\x00\x00" for b in bits])
        else:
            rows.append([b == 0 for b in bits])
    return rows


async def host_output(tmp_path: Path, *extra: str) -> tuple[str, str, str]:
    """Runs ``iroh-pair host`` until it waits for the other device: (code, stdout, stderr)."""
    p = await start("--data-dir", str(tmp_path / "h"), "--local", *extra, "host", "--yes")
    assert p.stdout is not None and p.stderr is not None
    try:
        out = (await asyncio.wait_for(p.stdout.readline(), 20)).decode()
        err = ""
        if "--json" not in extra:
            while "waiting for the other device" not in err:
                chunk = await asyncio.wait_for(p.stderr.readline(), 20)
                assert chunk, f"host ended early: {err!r}"
                err += chunk.decode()
        else:
            await asyncio.sleep(0.5)  # would anything else follow the code line?
    finally:
        p.kill()
        rest_out, rest_err = await p.communicate()
    out += rest_out.decode()
    err += rest_err.decode()
    code = out.strip().splitlines()[0]
    return code, out, err


async def test_host_prints_a_qr_code_that_decodes_to_the_code(tmp_path: Path) -> None:
    code, out, err = await host_output(tmp_path)
    PairingCode.parse(code)  # stdout's first line is the code, which the QR code must carry
    assert out.strip() == code and not set(out) & QR_CHARS  # stdout: the code alone
    matrix = matrix_from_blocks(err)
    size = len(matrix[0])
    assert (size - 4 - 17) % 4 == 0  # a QR code (17 + 4 v modules) with a 2-module quiet zone
    for border in (matrix[0], matrix[1], [r[0] for r in matrix], [r[1] for r in matrix],
                   [r[-1] for r in matrix], [r[-2] for r in matrix]):
        assert not any(border), "the quiet zone is not light"
    assert decode(matrix) == [code]

    # It can fail: a band of inverted modules through the middle is more than error correction
    # level L repairs, and another code's QR does not read as this code.
    corrupted = [row[:] for row in matrix]
    mid = len(corrupted) // 2
    for r in range(mid - 4, mid + 4):
        corrupted[r] = [not m if 2 <= c < size - 2 else m for c, m in enumerate(corrupted[r])]
    assert code not in decode(corrupted)
    other = PairingCode.parse(code)
    other = PairingCode(("zoo", *other.words[1:]), other.tag, other.ticket)
    from iroh_pair import _qr

    assert decode(matrix_from_blocks(_qr.terminal(str(other)))) == [str(other)] != [code]


@pytest.mark.parametrize("flags", [("--no-qr",), ("--json",)], ids=["no-qr", "json"])
async def test_no_qr_and_json_print_no_qr_code(tmp_path: Path, flags: tuple[str, ...]) -> None:
    if flags == ("--no-qr",):
        p = await start("--data-dir", str(tmp_path / "h"), "--local", "host", "--yes", "--no-qr")
        assert p.stderr is not None
        try:
            err = ""
            while "waiting for the other device" not in err:
                chunk = await asyncio.wait_for(p.stderr.readline(), 20)
                assert chunk, err
                err += chunk.decode()
        finally:
            p.kill()
            out_b, err_b = await p.communicate()
        out, err = out_b.decode(), err + err_b.decode()
        assert "pairing code" in err and PairingCode.parse(out.strip())
    else:
        _, out, err = await host_output(tmp_path, "--json")
        assert '"event": "code"' in out
    assert not set(out + err) & QR_CHARS, (out, err)


async def test_hosted_pairing_gives_the_qr_text_svg_and_png(tmp_path: Path) -> None:
    node = await open_local_node(tmp_path / "a", "alpha")
    try:
        hosted = await node.host_pairing()
        assert hosted.qr_text == str(hosted.code)
        assert PairingCode.parse(hosted.qr_text) == hosted.code
        png = hosted.qr_png(scale=3, border=4)
        pixels = png_matrix(png)
        assert decode(pixels, scale=2) == [hosted.qr_text]
        modules = len(pixels) // 3
        svg = ET.fromstring(hosted.qr_svg(scale=5, border=4))
        assert svg.tag.endswith("svg")
        assert int(float(svg.attrib["width"])) == int(float(svg.attrib["height"])) == modules * 5
        assert svg.findall(".//{http://www.w3.org/2000/svg}path")
    finally:
        await node.close()


async def test_join_reads_the_code_from_stdin(tmp_path: Path) -> None:
    a = ["--data-dir", str(tmp_path / "a"), "--local", "--json"]
    b = ["--data-dir", str(tmp_path / "b"), "--local", "--json"]
    host = await start(*a, "--name", "alice", "host", "--yes")
    try:
        code = str((await line(host))["code"])
        joiner = await asyncio.create_subprocess_exec(
            *CLI, *b, "--name", "bob", "join", "-", "--yes",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(joiner.communicate(f"  {code}\n\n".encode()), 30)
        assert joiner.returncode == 0, err
        assert (await line(host))["event"] == "paired"
        assert '"event": "paired"' in out.decode() and code not in out.decode() + err.decode()
        assert await asyncio.wait_for(host.wait(), 20) == 0  # host without --listen: done
    finally:
        if host.returncode is None:
            host.kill()
            await host.wait()
    rc, out_s, err_s = await run(*b, "devices")
    assert rc == 0 and "alice" in out_s


@pytest.mark.parametrize("given", [b"", b"  \n\t\n"], ids=["nothing", "blank"])
async def test_join_dash_with_empty_input_is_a_usage_error(tmp_path: Path, given: bytes) -> None:
    p = await asyncio.create_subprocess_exec(
        *CLI, "--data-dir", str(tmp_path / "b"), "--local", "join", "-",
        "--yes", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(p.communicate(given), 30)
    assert p.returncode == 2
    assert err.decode() == "iroh-pair: join -: no pairing code on standard input\n"


def test_the_capture_in_the_docs_decodes_to_the_code_it_shows() -> None:
    """docs/captures/host-qr.txt (referenced from the README) is a real capture: its QR code
    reads as the code printed above it."""
    text = (ROOT / "docs" / "captures" / "host-qr.txt").read_text(encoding="utf-8")
    m = re.search(CODE_RE.decode(), text)
    assert m is not None
    assert decode(matrix_from_blocks(text)) == [m.group(1)]


async def test_join_dash_on_a_terminal_prompts_for_the_code_then_asks_the_sas(tmp_path: Path) -> None:
    host = PtyProc("--data-dir", str(tmp_path / "h"), "--local", "--name", "alice", "host")
    joiner = None
    try:
        code = (await host.expect(CODE_RE)).group(1)
        joiner = PtyProc("--data-dir", str(tmp_path / "j"), "--local", "--name", "bob", "join", "-")
        await joiner.expect(rb"pairing code: ")
        joiner.type(code + b"\n")
        sas_h = (await host.expect(QUESTION_RE)).group(1)
        sas_j = (await joiner.expect(QUESTION_RE)).group(1)
        assert sas_h == sas_j
        host.type(b"y\n")
        joiner.type(b"y\n")
        assert await joiner.wait() == 0, joiner.output
        assert await host.wait() == 0, host.output
        assert b"paired with alice" in joiner.output
    finally:
        host.close()
        if joiner is not None:
            joiner.close()


async def test_a_terminal_too_narrow_gets_a_note_instead_of_the_qr_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # what shutil.get_terminal_size reads first
    host = PtyProc("--data-dir", str(tmp_path / "h"), "--local", "host", "--yes")
    try:
        await host.expect(rb"waiting for the other device")
        assert re.search(rb"\(the QR code of the code needs \d+ columns; this terminal has 40\)",
                         host.output), host.output
        assert not set(host.output.decode()) & QR_CHARS
    finally:
        host.close()
