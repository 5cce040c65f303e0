"""Parcel codes and what a barcode scanner sends when it reads their labels.

Two kinds of parcel code appear in a manifest (canonical form, see
docs/manifest.schema.json):

- an SSCC (GS1 Serial Shipping Container Code): 18 digits, an extension digit, a GS1
  company prefix, a serial reference and a mod-10 check digit;
- a carrier's own code, kept as its exact text: ``JD`` + 16 digits (a DHL-like piece
  number) or a ``1Z`` tracking number (UPS-like, 18 characters).

A scanner does not send the canonical code; it sends the symbol's data, optionally
preceded by an AIM symbology identifier (ISO/IEC 15424) saying what kind of symbol it
read. :func:`scanner_text` renders a code the way a label carries it:

- GS1-128 (``]C1``): ``00`` + SSCC, sometimes followed by GS (``\\x1d``) + AI ``420``
  + a ship-to postcode (some encoders put FNC1 after the fixed-length AI 00 too);
- GS1 DataMatrix (``]d2``): ``00`` + SSCC, sometimes directly followed by ``420`` +
  postcode (no separator is needed after a predefined-length AI);
- plain Code 128 (``]C0`` + code), or the bare code from a scanner configured
  without AIM prefixes (a common factory setting).

Nothing here decodes labels: that is the agent's job (firmware_agent), and the tests
check the renderings with an independent decoder (biip).
"""

from __future__ import annotations

import random
import string
from enum import StrEnum

GS = "\x1d"  # ASCII group separator: how a scanner transmits FNC1 inside a GS1 symbol
AI_SSCC = "00"
AI_SHIP_TO_POSTCODE = "420"

AIM_GS1_128 = "]C1"
AIM_CODE128 = "]C0"
AIM_GS1_DATAMATRIX = "]d2"

SSCC_LENGTH = 18
COMPANY_PREFIXES = ("0614141", "4012345", "5412345")
"""GS1 company prefixes used in GS1's own examples (GS1 US, GS1 Germany, GS1 Belgium)."""

_UPS_ALPHABET = string.ascii_uppercase + string.digits


class LabelStyle(StrEnum):
    """How a parcel's label is printed and how the scanner reports it."""

    GS1_128 = "gs1-128"  # ]C1 00 sscc
    GS1_128_POSTCODE = "gs1-128+420"  # ]C1 00 sscc GS 420 postcode
    GS1_DATAMATRIX = "gs1-datamatrix"  # ]d2 00 sscc [420 postcode]
    CODE128 = "code128"  # ]C0 code
    BARE = "bare"  # code, scanner without AIM prefixes


def gs1_check_digit(digits: str) -> int:
    """The GS1 mod-10 check digit of ``digits`` (all the digits before the check digit).

    Weights 3, 1, 3, ... from the rightmost digit leftwards; the check digit brings the
    weighted sum up to a multiple of ten. The same rule serves GTINs, GLNs and SSCCs.
    """
    if not digits.isdigit() or not digits.isascii():
        raise ValueError(f"expected decimal digits, got {digits!r}")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def sscc_check_digit(body17: str) -> int:
    """The check digit of an SSCC whose first 17 digits are ``body17``."""
    if len(body17) != SSCC_LENGTH - 1:
        raise ValueError(f"an SSCC body has 17 digits, got {len(body17)}: {body17!r}")
    return gs1_check_digit(body17)


def is_valid_sscc(code: str) -> bool:
    """Whether ``code`` is 18 ASCII digits with a correct check digit."""
    return (
        len(code) == SSCC_LENGTH
        and code.isascii()
        and code.isdigit()
        and sscc_check_digit(code[:-1]) == int(code[-1])
    )


def make_sscc(extension_digit: int, company_prefix: str, serial_reference: int) -> str:
    """An SSCC from its parts; the serial reference fills what the prefix leaves of 16."""
    if not 0 <= extension_digit <= 9:
        raise ValueError(f"extension digit must be 0-9, got {extension_digit}")
    if not (company_prefix.isdigit() and 6 <= len(company_prefix) <= 12):
        raise ValueError(f"a GS1 company prefix is 6-12 digits, got {company_prefix!r}")
    serial_digits = SSCC_LENGTH - 2 - len(company_prefix)
    if not 0 <= serial_reference < 10**serial_digits:
        raise ValueError(f"serial reference must fit in {serial_digits} digits")
    body = f"{extension_digit}{company_prefix}{serial_reference:0{serial_digits}d}"
    return body + str(sscc_check_digit(body))


def random_sscc(rng: random.Random) -> str:
    """A valid SSCC under one of :data:`COMPANY_PREFIXES`."""
    prefix = rng.choice(COMPANY_PREFIXES)
    serial_digits = SSCC_LENGTH - 2 - len(prefix)
    return make_sscc(rng.randrange(10), prefix, rng.randrange(10**serial_digits))


def ups_check_digit(body: str) -> int:
    """The check digit of a ``1Z`` number over the 15 characters after ``1Z``.

    The commonly published rule: letters count as ``(ord(c) - 63) % 10``, digits as
    themselves; odd positions (1-based) plain, even positions doubled; mod 10.
    The agent treats such codes as opaque text, so this only makes them look real.
    """
    total = 0
    for i, c in enumerate(body):
        value = int(c) if c.isdigit() else (ord(c) - 63) % 10
        total += value * (2 if i % 2 else 1)
    return (10 - total % 10) % 10


def random_carrier_code(rng: random.Random) -> str:
    """A carrier's own parcel code: ``JD`` + 16 digits, or an 18-character ``1Z`` number."""
    if rng.random() < 0.6:
        return "JD" + "".join(rng.choice(string.digits) for _ in range(16))
    shipper = "".join(rng.choice(_UPS_ALPHABET) for _ in range(6))
    service = rng.choice(("01", "02", "03", "12", "13"))
    reference = "".join(rng.choice(string.digits) for _ in range(7))
    body = shipper + service + reference
    return "1Z" + body + str(ups_check_digit(body))


def draw_label_style(rng: random.Random, code: str) -> LabelStyle:
    """How the label of ``code`` is printed and read: SSCCs as GS1, others as text."""
    if is_valid_sscc(code):
        return rng.choices(
            (LabelStyle.GS1_128, LabelStyle.GS1_128_POSTCODE, LabelStyle.GS1_DATAMATRIX),
            weights=(0.55, 0.25, 0.20),
        )[0]
    return rng.choice((LabelStyle.CODE128, LabelStyle.BARE))


def scanner_text(code: str, style: LabelStyle, *, postcode: str | None = None) -> str:
    """What a scanner sends (without its line terminator) for ``code`` in ``style``.

    ``postcode`` is the ship-to postcode for the GS1 styles that carry AI 420
    (:attr:`LabelStyle.GS1_128_POSTCODE` needs one, :attr:`LabelStyle.GS1_DATAMATRIX`
    adds it when given). GS1 styles need an SSCC; ``ValueError`` otherwise.
    """
    if style in (LabelStyle.CODE128, LabelStyle.BARE):
        return (AIM_CODE128 if style is LabelStyle.CODE128 else "") + code
    if not is_valid_sscc(code):
        raise ValueError(f"{style.value} labels carry an SSCC, got {code!r}")
    element = AI_SSCC + code
    if style is LabelStyle.GS1_128:
        return AIM_GS1_128 + element
    if style is LabelStyle.GS1_128_POSTCODE:
        if postcode is None:
            raise ValueError("a gs1-128+420 label needs a postcode")
        return AIM_GS1_128 + element + GS + AI_SHIP_TO_POSTCODE + postcode
    tail = "" if postcode is None else AI_SHIP_TO_POSTCODE + postcode
    return AIM_GS1_DATAMATRIX + element + tail


class GarbageKind(StrEnum):
    """Ways a scan goes wrong before the agent sees it."""

    TRUNCATED = "truncated"  # the read stopped early: the code is cut short
    BAD_CHECK = "bad_check"  # a misread digit: the check digit no longer fits
    JUNK = "junk"  # printable nonsense (a shelf label, a smudge read as Code 39)
    BINARY = "binary"  # control characters and bytes that are not UTF-8 (line noise)


GARBAGE_WEIGHTS: dict[GarbageKind, float] = {
    GarbageKind.TRUNCATED: 0.35,
    GarbageKind.BAD_CHECK: 0.25,
    GarbageKind.JUNK: 0.25,
    GarbageKind.BINARY: 0.15,
}

_JUNK_CHARS = string.ascii_letters + string.digits + string.punctuation + " "
# Control bytes a noisy line produces; CR and LF are left out because they would end
# the scanner's line and split one bad read into two.
_CONTROL_BYTES = bytes(b for b in range(0x20) if b not in (0x0A, 0x0D)) + b"\x7f"


def garbage_text(
    rng: random.Random,
    code: str,
    style: LabelStyle,
    *,
    postcode: str | None = None,
    kind: GarbageKind | None = None,
) -> tuple[str, GarbageKind]:
    """A bad read near the label of ``code`` (printed in ``style``) and what went wrong.

    No result is a valid rendering of any SSCC or of ``code``: truncations cut inside
    the code itself (never just the trailing AI 420), a bad check digit is a wrong one.
    ``kind`` ``None`` draws one with :data:`GARBAGE_WEIGHTS`. Text that is not UTF-8
    is held as lone surrogates (see :func:`raw_bytes`).
    """
    if kind is None:
        kinds = list(GARBAGE_WEIGHTS)
        kind = rng.choices(kinds, weights=[GARBAGE_WEIGHTS[k] for k in kinds])[0]
    if kind is GarbageKind.TRUNCATED:
        full = scanner_text(code, style, postcode=postcode)
        prefix_len = 3 if full.startswith("]") else 0  # keep the AIM prefix, if any
        if style in (LabelStyle.CODE128, LabelStyle.BARE):
            keep = rng.randint(2, len(code) - 2)
            return full[: prefix_len + keep], kind
        keep = rng.randint(1, SSCC_LENGTH - 3)  # "00" + a few SSCC digits
        return full[: prefix_len + len(AI_SSCC) + keep], kind
    if kind is GarbageKind.BAD_CHECK:
        if not is_valid_sscc(code):
            code, style = random_sscc(rng), LabelStyle.GS1_128
        wrong = (int(code[-1]) + rng.randint(1, 9)) % 10
        bad = code[:-1] + str(wrong)
        element = AI_SSCC + bad
        if style is LabelStyle.GS1_DATAMATRIX:
            return AIM_GS1_DATAMATRIX + element, kind
        return AIM_GS1_128 + element, kind
    if kind is GarbageKind.JUNK:
        return "".join(rng.choice(_JUNK_CHARS) for _ in range(rng.randint(1, 24))), kind
    data = bytearray(
        rng.choice(_CONTROL_BYTES) if rng.random() < 0.5 else rng.randint(0x80, 0xFF)
        for _ in range(rng.randint(1, 12))
    )
    # High bytes may happen to form valid UTF-8 ("\xd2\x8d" is a Cyrillic letter): one
    # control byte at least keeps the read unmistakably broken.
    data[rng.randrange(len(data))] = rng.choice(_CONTROL_BYTES)
    return bytes(data).decode("utf-8", "surrogateescape"), kind


def raw_bytes(raw: str) -> bytes:
    """The bytes a scanner put on the wire for ``raw``.

    Text is UTF-8. Bytes that are not UTF-8 (line noise, a misconfigured code page)
    are held in ``raw`` as lone surrogates U+DC80-U+DCFF, Python's ``surrogateescape``
    (PEP 383), which JSON writes as ``\\udcXX`` escapes; they turn back into the
    original bytes here.
    """
    return raw.encode("utf-8", "surrogateescape")
