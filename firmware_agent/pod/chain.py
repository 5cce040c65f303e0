"""Issuing PODs as a hash chain: each one signs the SHA-256 of the one before.

Every POD carries ``seq`` (1, 2, 3, ... per device) and ``prev``, the hex SHA-256 of the
previous POD's compact serialization (64 zeros for the first). Both are inside the
signed payload, so nobody without the device key can delete, reorder or replace a POD
without a verifier noticing at the next one (:mod:`firmware_agent.pod.verify`).

Pure logic: no clock, no files. The caller persists :attr:`PodChain.state` together
with the POD it belongs to (:mod:`firmware_agent.pod.state`, later the outbox).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.jws import peek_claims, sign_compact
from firmware_agent.contract.keys import key_thumbprint
from firmware_agent.contract.pod import (
    GENESIS_PREV,
    POD_VERSION,
    RESERVED_CLAIMS,
    PodClaims,
    PodFields,
    is_hex_digest,
    pod_digest,
)


@dataclass(frozen=True, slots=True)
class ChainState:
    """The last issued POD: its ``seq`` (0 before the first) and its digest."""

    seq: int = 0
    prev: str = GENESIS_PREV

    def __post_init__(self) -> None:
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 0:
            raise ValueError(f"seq must be an integer >= 0, not {self.seq!r}")
        if not is_hex_digest(self.prev):
            raise ValueError(f"prev must be 64 lowercase hex digits, not {self.prev!r}")
        if self.seq == 0 and self.prev != GENESIS_PREV:
            raise ValueError("a chain at seq 0 has no previous POD: prev must be GENESIS_PREV")


@dataclass(frozen=True, slots=True)
class Pod:
    """One issued POD: the token to publish, its claims, and its digest (the next prev)."""

    token: str
    claims: dict[str, Any]
    digest: str

    @property
    def seq(self) -> int:
        seq: int = self.claims["seq"]
        return seq


class PodChain:
    """Signs PODs for one device, linking each to the previous one.

    Not thread-safe: one chain per device, driven by one task. ``state`` is where the
    chain stands; give the saved one back after a restart, never a fresh
    ``ChainState()`` for a device that has issued PODs (that forks the chain).
    """

    __slots__ = ("_device_id", "_key", "_kid", "_state")

    def __init__(
        self, device_id: str, key: Ed25519PrivateKey, state: ChainState = ChainState()
    ) -> None:
        if not isinstance(device_id, str) or not device_id:
            raise ValueError("device_id must be a non-empty string")
        self._device_id = device_id
        self._key = key
        self._kid = key_thumbprint(key.public_key())
        self._state = state

    def __repr__(self) -> str:
        # Spelled out so that the key can never appear here, whatever its repr becomes.
        return f"PodChain(device_id={self._device_id!r}, kid={self._kid!r}, state={self._state!r})"

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def kid(self) -> str:
        """The RFC 7638 thumbprint of the device key, the ``kid`` of every POD."""
        return self._kid

    @property
    def state(self) -> ChainState:
        """The last issued POD's seq and digest (what the next POD links to)."""
        return self._state

    def deliver(self, fields: PodFields) -> tuple[Pod, PodClaims]:
        """Sign a delivery as the next POD of the chain: the claims the van's pipeline
        makes, typed (:class:`~firmware_agent.contract.pod.PodClaims`), and the POD.

        :class:`~firmware_agent.contract.errors.CodecError` (a ValueError) if a field
        cannot be carried. The state advances only when a POD was issued.
        """
        claims = PodClaims.of(
            fields, device_id=self._device_id, seq=self._state.seq + 1, prev=self._state.prev
        )
        return self._sign(claims.to_json()), claims

    def issue(self, fields: Mapping[str, Any]) -> Pod:
        """Sign any ``fields`` plus v, device_id, seq and prev as the next POD of the
        chain (the chain itself, for tests and tools; the van signs with :meth:`deliver`).

        :class:`ValueError` if ``fields`` sets one of :data:`RESERVED_CLAIMS`;
        :class:`~firmware_agent.contract.jws.JwsError` (a ValueError) if a value is not JSON.
        The state advances only when a POD was issued.
        """
        clash = RESERVED_CLAIMS & fields.keys()
        if clash:
            raise ValueError(f"fields must not set {sorted(clash)}: the chain sets them")
        return self._sign(
            {
                **fields,
                "v": POD_VERSION,
                "device_id": self._device_id,
                "seq": self._state.seq + 1,
                "prev": self._state.prev,
            }
        )

    def _sign(self, claims: Mapping[str, Any]) -> Pod:
        token = sign_compact(claims, self._key, kid=self._kid)
        digest = pod_digest(token)
        self._state = ChainState(seq=self._state.seq + 1, prev=digest)
        # The claims as a verifier will read them (tuples become lists, ...).
        return Pod(token=token, claims=peek_claims(token), digest=digest)
