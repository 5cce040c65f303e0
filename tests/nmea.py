"""Building NMEA input for tests."""

from __future__ import annotations

from firmware_agent.gnss.sentences import nmea_checksum


def line(body: str, *, checksum: bool = True, crlf: bool = True) -> bytes:
    """``$body*HH\\r\\n`` with the correct checksum."""
    out = "$" + body + (f"*{nmea_checksum(body):02X}" if checksum else "")
    return (out + ("\r\n" if crlf else "")).encode("ascii")


def lines(*bodies: str) -> bytes:
    return b"".join(line(b) for b in bodies)


def ublox_cycle(second: int) -> tuple[str, ...]:
    """One u-blox style 1 Hz cycle at 08:37:ss on 2010-08-21 (Rotterdam), fix valid."""
    t = f"0837{second:02d}.00"
    return (
        f"GPRMC,{t},A,5155.55442,N,00434.65873,E,0.211,12.5,210810,,,A",
        "GPVTG,12.5,T,,M,0.211,N,0.391,K,A",
        f"GPGGA,{t},5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,",
        "GPGSA,A,3,27,15,09,28,18,08,,,,,,,3.33,2.51,2.20",
        f"GPGLL,5155.55442,N,00434.65873,E,{t},A,A",
    )


CYCLE_1 = ublox_cycle(23)
CYCLE_2 = tuple(
    s.replace("5155.55442", "5155.55430")
    .replace("00434.65873", "00434.65878")
    .replace("-4.0,M", "-4.2,M")
    for s in ublox_cycle(24)
)
