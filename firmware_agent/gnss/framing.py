"""Cutting a receiver's byte stream into candidate NMEA sentences.

A receiver's stream is not a clean sequence of lines: it starts mid-sentence, carries
binary protocols (UBX, SiRF) between sentences, loses bytes on a noisy UART, glues two
sentences together when a line end is lost, and a log may hold comments. The framer
turns any byte sequence, split at any point, into ASCII candidates that start after a
``$``; it never raises, and it counts what it throws away.
"""

from __future__ import annotations

from collections import Counter

from firmware_agent.faults import FaultCounter

# NMEA 0183 caps a sentence at 82 characters, but real receivers exceed it (u-blox
# PUBX, NMEA 4.11 GSV/GSA, Trimble PTNL: up to ~200 in the corpus). Past this length a
# "sentence" is noise or two sentences fused by a lost line end.
DEFAULT_MAX_SENTENCE_CHARS = 256

# Fault kinds counted here.
NOISE = "noise_bytes"
NON_ASCII = "non_ascii"
OVERLONG = "overlong"
COMMENT = "comment"


class SentenceFramer:
    """Incremental framer: ``feed(bytes) -> list[str]`` of candidate sentence bodies.

    Each returned string is what followed a ``$`` up to the end of its line (or the next
    ``$``), with anything after a ``*HH`` checksum cut off; the ``$`` itself is dropped.
    Lines starting with ``#`` are counted in ``ignored`` as comments when ``comments`` is
    true (recorded logs), else as noise in ``faults``. Memory stays bounded whatever the
    input: a run without line ends keeps at most ``max_sentence_chars`` bytes.
    """

    __slots__ = ("_buf", "_comments", "_max", "faults", "ignored")

    def __init__(
        self,
        faults: FaultCounter,
        ignored: Counter[str],
        *,
        comments: bool = False,
        max_sentence_chars: int = DEFAULT_MAX_SENTENCE_CHARS,
    ) -> None:
        self.faults = faults
        self.ignored = ignored
        self._comments = comments
        self._max = max_sentence_chars
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        buf = self._buf + data if self._buf else data
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if cut < 0:
            self._buf = self._bound(buf)
            return []
        self._buf = self._bound(buf[cut + 1 :])
        out: list[str] = []
        append = out.append
        limit = self._max
        for line in buf[: cut + 1].splitlines():
            # The common case inline: one clean "$...*HH" sentence alone on its line
            # (its only "*" the checksum's: "...*HH*\x00\x00" is a sentence with
            # noise glued after it, for _line to cut).
            if (
                line[:1] == b"$"
                and line.find(b"*") == len(line) - 3
                and len(line) <= limit
                and line.count(b"$") == 1
                and line.isascii()
            ):
                append(line[1:].decode("ascii"))
            elif line:
                self._line(line, out)
        return out

    def flush(self) -> list[str]:
        """End of stream: the unterminated tail is framed as if a line end followed."""
        tail, self._buf = self._buf, b""
        out: list[str] = []
        if tail:
            self._line(tail, out)
        return out

    def _bound(self, pending: bytes) -> bytes:
        # Keep an unterminated tail only while it can still become a sentence.
        if len(pending) <= self._max:
            return pending
        start = pending.rfind(b"$")
        keep = pending[start:] if start >= 0 and len(pending) - start <= self._max else b""
        dropped = pending[: len(pending) - len(keep)]
        if dropped[:1] == b"$":
            self.faults.add(OVERLONG, dropped)
        else:
            self.faults.add(NOISE, dropped, n=len(dropped))
        return keep

    def _line(self, line: bytes, out: list[str]) -> None:
        first = line[0]
        if first == 0x24 and line.count(b"$") == 1:  # the common case: one clean sentence
            self._candidate(line[1:], out)
            return
        if first == 0x23 and self._comments:  # '#'
            self.ignored[COMMENT] += 1
            return
        pieces = line.split(b"$")
        if pieces[0].strip():
            self.faults.add(NOISE, pieces[0], n=len(pieces[0]))
        for piece in pieces[1:]:
            self._candidate(piece, out)

    def _candidate(self, body: bytes, out: list[str]) -> None:
        if len(body) >= self._max:
            self.faults.add(OVERLONG, body)
            return
        star = body.find(b"*")
        if star >= 0 and len(body) > star + 3:
            # Bytes after "*HH" are not part of the sentence (line noise before the CR/LF).
            if body[star + 3 :].strip():
                self.faults.add(NOISE, body[star + 3 :], n=len(body) - star - 3)
            body = body[: star + 3]
        try:
            out.append(body.decode("ascii"))
        except UnicodeDecodeError:
            self.faults.add(NON_ASCII, body)
