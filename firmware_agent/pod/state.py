"""Where the POD chain stands between runs, kept durably on disk.

The chain state is two numbers, but losing them is costly: an agent that restarts at
seq 1 (or at an old seq from a stale copy) forks its chain, and every verifier then
reports broken links for the rest of the device's life. So a missing file means "new
device" and a damaged one is an error for a human, never a silent restart.

This store is deliberately small: the agent saves the state right after the POD is in
the outbox, and the outbox also keeps it in the same SQLite transaction as the POD
(:func:`encode_state` bytes); at start the highest of the file, the outbox's copy and
the pending PODs (:func:`recover_state`) wins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware_agent.contract.jws import JwsError, peek_claims, verify_compact
from firmware_agent.contract.keys import make_private_dirs, write_file_atomically
from firmware_agent.contract.pod import pod_digest
from firmware_agent.errors import AgentError
from firmware_agent.pod.chain import ChainState

STATE_FORMAT_VERSION = 1


class ChainStateError(AgentError, ValueError):
    """The saved chain state is unreadable; restarting the chain would fork it."""


def _parse_state(data: bytes) -> ChainState:
    """The state in a state file's bytes; :class:`ValueError` saying what is wrong."""
    if not data.strip():
        raise ValueError("empty file")
    obj = json.loads(data.decode("utf-8"))
    if not isinstance(obj, dict) or obj.get("v") != STATE_FORMAT_VERSION:
        raise ValueError(f"not a version {STATE_FORMAT_VERSION} chain state object")
    seq, prev = obj.get("seq"), obj.get("prev")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(prev, str):
        # A bad value in the file, not a caller's type error.
        raise ValueError("seq must be an integer and prev a string")  # noqa: TRY004
    return ChainState(seq=seq, prev=prev)  # checks the values themselves


def encode_state(state: ChainState) -> bytes:
    """``state`` as a state file's bytes (also what the outbox keeps with each POD)."""
    body = {"v": STATE_FORMAT_VERSION, "seq": state.seq, "prev": state.prev}
    return json.dumps(body).encode("ascii") + b"\n"


def parse_state(data: bytes) -> ChainState:
    """The state in ``data`` (:func:`encode_state`'s bytes); :class:`ChainStateError`
    saying what is wrong."""
    try:
        return _parse_state(data)
    except ValueError as err:
        raise ChainStateError(f"POD chain state unreadable: {err}") from err


class ChainStateStore:
    """The chain state in a small JSON file: ``{"v": 1, "seq": N, "prev": "<hex>"}``."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"ChainStateStore({str(self.path)!r})"

    def load(self) -> ChainState:
        """The saved state; ``ChainState()`` if the file does not exist.

        :class:`ChainStateError` if it exists but cannot be understood (empty, not JSON,
        unknown version, bad seq or prev): the caller must not start a new chain then.
        Other :class:`OSError` (permissions, I/O) propagate unchanged.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ChainState()
        try:
            return _parse_state(data)
        except ValueError as err:
            raise ChainStateError(
                f"POD chain state {self.path} is damaged ({err}); restarting the chain at "
                "seq 1 would fork it: rebuild the file from the POD journal "
                "(firmware_agent.pod.state.recover_state) or restore it from a backup"
            ) from err

    def save(self, state: ChainState) -> None:
        """Durably replace the saved state with ``state`` (temp file, fsync, rename, fsync)."""
        make_private_dirs(self.path.parent)
        write_file_atomically(self.path, encode_state(state), overwrite=True)


def recover_state(tokens: Iterable[str], *, key: Ed25519PublicKey | None = None) -> ChainState:
    """The state after the highest-seq POD among ``tokens`` (a journal), for rebuilding.

    Tokens that cannot be read (or, when ``key`` is given, do not verify) are skipped.
    The highest seq wins rather than the last line, so that a journal written out of
    order can never move the chain backwards. No POD at all gives ``ChainState()``.
    """
    best = ChainState()
    for token in tokens:
        try:
            claims = verify_compact(token, key) if key is not None else peek_claims(token)
        except JwsError:
            continue
        seq = claims.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and seq > best.seq:
            best = ChainState(seq=seq, prev=pod_digest(token))
    return best
