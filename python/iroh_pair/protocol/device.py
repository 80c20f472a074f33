"""Device info exchanged (sealed) during pairing, and its canonical encoding.

Encoding: four fields in this order, each ``u8 length || UTF-8 bytes``::

    name (1..64 bytes) | device_type (1..32, [a-z0-9._-]) | os (0..64) | app_version (0..32)

Text fields must not contain control characters (Unicode category Cc); nothing may follow the
last field.

Example::

    >>> from iroh_pair.protocol.device import DeviceInfo
    >>> info = DeviceInfo("laptop", "desktop")
    >>> info.encode()
    b'\\x06laptop\\x07desktop\\x00\\x00'
    >>> DeviceInfo.decode(info.encode()) == info
    True
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from iroh_pair.errors import InvalidDeviceInfo, ProtocolError
from iroh_pair.protocol.constants import RejectCode

__all__ = ["DeviceInfo", "FIELD_LIMITS", "MAX_DEVICE_INFO"]

#: (min, max) UTF-8 byte length of each field, in encoding order.
FIELD_LIMITS: dict[str, tuple[int, int]] = {
    "name": (1, 64),
    "device_type": (1, 32),
    "os": (0, 64),
    "app_version": (0, 32),
}
#: Largest encoded DeviceInfo.
MAX_DEVICE_INFO = sum(1 + hi for _, hi in FIELD_LIMITS.values())

_TYPE = re.compile(r"[a-z0-9._-]*")


def _check(field: str, value: str) -> bytes:
    lo, hi = FIELD_LIMITS[field]
    raw = value.encode("utf-8", "strict")
    if not lo <= len(raw) <= hi:
        raise InvalidDeviceInfo(f"DeviceInfo.{field} must be {lo}..{hi} UTF-8 bytes")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise InvalidDeviceInfo(f"DeviceInfo.{field} contains a control character")
    if field == "device_type" and not _TYPE.fullmatch(value):
        raise InvalidDeviceInfo("DeviceInfo.device_type is a token of [a-z0-9._-]")
    return raw


@dataclass(frozen=True)
class DeviceInfo:
    """Describes a device to its peer: display ``name``, ``device_type`` token (e.g.
    ``"desktop"``, ``"phone"``, ``"server"``), ``os`` and ``app_version`` free text.

    The constructor validates the limits (:class:`~iroh_pair.errors.InvalidDeviceInfo`, a
    ValueError); :meth:`decode` raises ProtocolError.
    """

    name: str
    device_type: str = "other"
    os: str = ""
    app_version: str = ""

    def __post_init__(self) -> None:
        for field in FIELD_LIMITS:
            value = getattr(self, field)
            if not isinstance(value, str):
                raise TypeError(f"DeviceInfo.{field} must be str")
            _check(field, value)

    def encode(self) -> bytes:
        """The canonical encoding."""
        out = bytearray()
        for field in FIELD_LIMITS:
            raw = str(getattr(self, field)).encode("utf-8")
            out.append(len(raw))
            out += raw
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> DeviceInfo:
        """Inverse of :meth:`encode`; ProtocolError(MALFORMED) for anything else."""
        values: list[str] = []
        pos = 0
        for field in FIELD_LIMITS:
            if pos >= len(data):
                raise ProtocolError(RejectCode.MALFORMED, "truncated device info")
            n = data[pos]
            raw = data[pos + 1 : pos + 1 + n]
            if len(raw) != n:
                raise ProtocolError(RejectCode.MALFORMED, "truncated device info")
            pos += 1 + n
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError(RejectCode.MALFORMED, f"{field} is not UTF-8") from None
        if pos != len(data):
            raise ProtocolError(RejectCode.MALFORMED, "trailing bytes after device info")
        try:
            return cls(*values)
        except ValueError as e:
            raise ProtocolError(RejectCode.MALFORMED, str(e)) from None
