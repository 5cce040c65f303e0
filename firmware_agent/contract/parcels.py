"""Parcel labels: from what a scanner sent to the code the manifest lists.

A scanner sends text, sometimes prefixed with an AIM symbology identifier (``]C1``
GS1-128, ``]e0`` GS1 DataBar, ``]d2`` GS1 DataMatrix, ``]Q3`` GS1 QR, ``]C0`` plain
Code 128, ``]Q1`` plain QR, ...), with FNC1 separators sent as GS (``\\x1d``). biip does
the GS1 work (element strings, Digital Link URIs, check digits); this module decides
what to hand it and reduces the result to one canonical :attr:`ParcelCode.code`, the
same string :func:`canonical_code` makes of a manifest entry:

- anything carrying AI 00 -> the 18-digit SSCC;
- any other GS1 data -> its HRI with the element strings in AI order, e.g.
  ``(01)09506000134352(21)ABC`` (the order a label encodes them in varies);
- anything else -> the text itself, without the AIM prefix.

Without a GS1 symbology identifier (a scanner with AIM identifiers off, or a plain
symbology) the payload is GS1 only when it shows it: it contains a GS separator, it
is 20 digits starting ``00`` (an SSCC element string), 18 digits (a bare SSCC), an HRI
string ``(00)...``, or a GS1 Digital Link URI. Every other digit string is a plain
code: reading a carrier's 22-digit tracking number as GS1 would invent dates.

A code whose check digit is wrong (SSCC, GTIN, GLN) is always an error, never a
plain code: a misread must beep red, not record the wrong parcel.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from biip import ParseConfig, ParseError
from biip.gs1_digital_link_uris import GS1DigitalLinkURI
from biip.gs1_element_strings import GS1ElementStrings
from biip.gs1_messages import GS1Message
from biip.sscc import Sscc
from biip.symbology import GS1Symbology, SymbologyIdentifier

from firmware_agent.contract.errors import ContractError

# No parcel label comes near: GS1-128 carries at most 48 data characters, and a GS1
# Digital Link URI in a QR code stays well under 200. Counted in UTF-8 bytes, the unit
# the serial reader cuts over-long lines in, so that a cut line is always too long
# here and can never be recorded as a (truncated) code.
MAX_SCAN_BYTES: Final = 256
MAX_PLAIN_CHARS: Final = 64
GS: Final = "\x1d"

# Only ASCII whitespace is trimmed: other spaces are not something a scanner pads
# with, and are rejected as not printable.
_TRIM: Final = " \t\r\n"
_GS1_SYMBOLOGIES: Final = GS1Symbology.with_gs1_messages()
_DIGITAL_LINK_SYMBOLOGIES: Final = GS1Symbology.with_gs1_digital_link_uri()
# biip's defaults, spelled out because they are part of our contract: dates in
# element strings are verified, and GS is the only separator.
_BIIP_CONFIG: Final = ParseConfig(separator_chars=[GS], gs1_element_strings_verify_date=True)
_EXAMPLE_CHARS: Final = 40


class CodeKind(StrEnum):
    SSCC = "sscc"
    GS1 = "gs1"
    PLAIN = "plain"


class ScanParseError(ContractError, ValueError):
    """A scan is not a usable parcel code.

    ``reason`` is a short machine string (stable, for counters and JSON output):
    ``not_text``, ``too_long``, ``empty``, ``control_chars``, ``not_printable``,
    ``bad_check_digit``, ``bad_gs1``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParcelCode:
    """A parsed scan.

    - ``raw``: what the scanner sent, unchanged.
    - ``symbology``: the AIM identifier (``"]C1"``), ``None`` when the scanner sent none.
    - ``code``: the canonical code to match against the manifest (see the module doc).
    - ``gtin``: the GTIN-14 of AI 01, if any.
    - ``ship_to_postcode``: AI 420, or AI 421 without its 3-digit ISO country code.
    - ``hri``: the GS1 human readable interpretation, in the label's order; ``None``
      for plain codes.
    """

    raw: str
    symbology: str | None
    kind: CodeKind
    code: str
    gtin: str | None = None
    ship_to_postcode: str | None = None
    hri: str | None = None


def parse_scan(raw: str) -> ParcelCode:
    """Parse one scan; raises :class:`ScanParseError` (and nothing else) if unusable."""
    return _parse(raw, aim_prefix=True)


def canonical_code(code: str) -> str:
    """A manifest parcel entry reduced as :func:`parse_scan` reduces a scan.

    ``"(00)106141412345678908"`` and ``"00106141412345678908"`` both become
    ``"106141412345678908"``; GS1 data becomes its HRI; anything else is returned
    stripped of surrounding whitespace. Manifest entries carry no AIM prefix (a plain
    code may itself begin with ``]``), so none is looked for. An entry no scan could
    match (a wrong SSCC check digit, say) is returned as is, so that one bad manifest
    entry never stops a route from loading. Raises :class:`ScanParseError` only for an
    empty entry.

    For every accepted scan, ``canonical_code(parse_scan(raw).code) ==
    parse_scan(raw).code``.
    """
    text = code.strip()
    if not text:
        raise ScanParseError("empty", "empty parcel code")
    try:
        return _parse(text, aim_prefix=False).code
    except ScanParseError:
        return text


def _parse(raw: str, *, aim_prefix: bool) -> ParcelCode:
    if not isinstance(raw, str):
        raise ScanParseError("not_text", f"a scan is text, got {type(raw).__name__}")
    try:
        n_bytes = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates: JSON can carry them ("\ud800"), no scanner can send them.
        raise ScanParseError("not_text", f"not valid Unicode text: {_show(raw)}") from None
    if n_bytes > MAX_SCAN_BYTES:
        raise ScanParseError(
            "too_long", f"{n_bytes} bytes, more than the {MAX_SCAN_BYTES} any label holds"
        )
    if "\ufffd" in raw:
        # The serial reader's mark for bytes that were not UTF-8 (errors="replace").
        raise ScanParseError("not_text", f"the scanner sent bytes that are not text: {_show(raw)}")
    text = raw.strip(_TRIM)
    if not text:
        raise ScanParseError("empty", "the scan is empty")

    symbology = _symbology(text) if aim_prefix else None
    if symbology is None:
        return _parse_untagged(raw, None, text)
    payload = text[len(symbology.value) :]
    if symbology.gs1_symbology in _GS1_SYMBOLOGIES:
        digital_link = symbology.gs1_symbology in _DIGITAL_LINK_SYMBOLOGIES
        return _parse_gs1(raw, symbology.value, payload, digital_link=digital_link)
    payload = payload.strip(_TRIM)
    if not payload:
        raise ScanParseError("empty", f"nothing after the symbology identifier {symbology}")
    return _parse_untagged(raw, symbology.value, payload)


def _symbology(text: str) -> SymbologyIdentifier | None:
    """The AIM prefix of ``text``, or ``None`` (then a leading ``]`` is plain text)."""
    if not text.startswith("]") or len(text) < 3:
        return None
    try:
        symbology = SymbologyIdentifier.extract(text)
    except (ParseError, ValueError, IndexError):
        return None
    if len(symbology.value) < 3 or not symbology.value.isascii():
        return None
    return symbology


def _parse_gs1(raw: str, aim: str | None, payload: str, *, digital_link: bool) -> ParcelCode:
    """``payload`` must be GS1 data: element strings, or a Digital Link URI if allowed."""
    # FNC1 in first position may arrive as a leading GS from scanners that do not
    # send it as the symbology identifier.
    data = payload.strip(_TRIM).lstrip(GS)
    if not data:
        raise ScanParseError("empty", "GS1 symbol without data")
    if not data.isascii():
        raise ScanParseError("bad_gs1", f"GS1 data is ASCII only: {_show(data)}")
    if any(char != GS and not char.isprintable() for char in data):
        # biip would quietly strip some (Python counts \x1c-\x1f as whitespace).
        raise ScanParseError("control_chars", f"control character in GS1 data {_show(data)}")
    if digital_link and _looks_like_uri(data):
        try:
            uri = GS1DigitalLinkURI.parse(data, config=_BIIP_CONFIG)
        except (ParseError, ValueError) as err:
            raise ScanParseError("bad_gs1", f"not a GS1 Digital Link URI: {err}") from err
        return _from_elements(raw, aim, uri.element_strings, uri.as_gs1_message().as_hri())
    try:
        message = GS1Message.parse(data, config=_BIIP_CONFIG)
    except (ParseError, ValueError) as err:
        raise ScanParseError("bad_gs1", f"not GS1 element strings: {err}") from err
    return _from_elements(raw, aim, message.element_strings, message.as_hri())


def _parse_untagged(raw: str, aim: str | None, payload: str) -> ParcelCode:
    """A payload without a GS1 symbology identifier: GS1 only if it looks it."""
    if GS in payload:
        # A plain code cannot hold a control character, so this is GS1 or nothing.
        return _parse_gs1(raw, aim, payload, digital_link=False)
    if payload.isascii() and payload.isdigit():
        if len(payload) == 20 and payload.startswith("00"):
            return _parse_gs1(raw, aim, payload, digital_link=False)
        if len(payload) == 18:
            try:
                sscc = Sscc.parse(payload, config=_BIIP_CONFIG)
            except (ParseError, ValueError) as err:
                raise ScanParseError("bad_check_digit", f"18 digits, not an SSCC: {err}") from err
            return ParcelCode(raw, aim, CodeKind.SSCC, sscc.value, hri=f"(00){sscc.value}")
    elif payload.isascii() and _looks_like_uri(payload):
        try:
            uri = GS1DigitalLinkURI.parse(payload, config=_BIIP_CONFIG)
        except (ParseError, ValueError):
            pass  # an ordinary URL (a carrier's tracking link): a plain code
        else:
            return _from_elements(raw, aim, uri.element_strings, uri.as_gs1_message().as_hri())
    elif payload.isascii() and payload.startswith("("):
        parsed = _parse_hri(payload)
        if parsed is not None:
            message, hri = parsed
            return _from_elements(raw, aim, message.element_strings, hri)
    return _plain(raw, aim, payload)


def _parse_hri(text: str) -> tuple[GS1Message, str] | None:
    """``(00)106141412345678908(420)1234`` as GS1, if it is exactly that."""
    try:
        message = GS1Message.parse_hri(text, config=_BIIP_CONFIG)
    except (ParseError, ValueError):
        return None
    hri = message.as_hri()
    # biip skips text it cannot match ("(00)...(x"); such a label is not GS1 HRI.
    return (message, hri) if hri == "".join(text.split()) else None


def _from_elements(raw: str, aim: str | None, elements: GS1ElementStrings, hri: str) -> ParcelCode:
    if not elements:
        raise ScanParseError("bad_gs1", "GS1 data without element strings")
    for element in elements:
        # biip verifies check digits of nested keys but records a failure instead of
        # raising; a wrong check digit is a misread or a bad label, never a parcel.
        error = element.sscc_error or element.gtin_error or element.gln_error
        if error is not None:
            reason = "bad_check_digit" if "check digit" in error else "bad_gs1"
            raise ScanParseError(reason, f"({element.ai.ai}): {error}")
    sscc = elements.get(ai="00")
    gtin = elements.get(ai="01")
    postcode = None
    if (ship_to := elements.get(ai="420")) is not None:
        postcode = ship_to.value
    elif (ship_to := elements.get(ai="421")) is not None:
        postcode = ship_to.value[3:]
    if sscc is not None:
        kind, code = CodeKind.SSCC, sscc.value
    else:
        kind, code = CodeKind.GS1, _sorted_hri(elements)
    return ParcelCode(
        raw=raw,
        symbology=aim,
        kind=kind,
        code=code,
        gtin=gtin.gtin.as_gtin_14() if gtin is not None and gtin.gtin is not None else None,
        ship_to_postcode=postcode,
        hri=hri,
    )


def _sorted_hri(elements: GS1ElementStrings) -> str:
    """The HRI with element strings in AI order: the same data in any order matches.

    A Digital Link URI puts key qualifiers (21, 10) in the path and attributes (15) in
    the query, so the same label gives (01)(10)(15) as a QR code and (01)(15)(10) as a
    DataMatrix element string. Sorting is stable: a repeated AI keeps its order.
    """
    ordered = sorted(elements, key=lambda element: element.ai.ai)
    return "".join(f"({element.ai.ai}){element.value}" for element in ordered)


def _plain(raw: str, aim: str | None, text: str) -> ParcelCode:
    for char in text:
        if not char.isprintable():
            category = unicodedata.category(char)
            reason = "control_chars" if category == "Cc" else "not_printable"
            raise ScanParseError(
                reason, f"character U+{ord(char):04X} ({category}) in {_show(text)}"
            )
    if len(text) > MAX_PLAIN_CHARS:
        raise ScanParseError(
            "too_long", f"{len(text)} characters, a plain code has at most {MAX_PLAIN_CHARS}"
        )
    return ParcelCode(raw, aim, CodeKind.PLAIN, text)


def _looks_like_uri(text: str) -> bool:
    # QR alphanumeric mode is upper case only: "HTTPS://ID.GS1.ORG/01/..." is common.
    return text[:8].lower().startswith(("http://", "https://"))


def _show(text: str) -> str:
    return repr(text[:_EXAMPLE_CHARS] + ("..." if len(text) > _EXAMPLE_CHARS else ""))
