"""Signed proof of delivery (POD): Ed25519 JWS records linked in a hash chain.

- :mod:`~firmware_agent.pod.keys`: the device key file and public key formats.
- :mod:`~firmware_agent.pod.jws`: JWS compact sign/verify (EdDSA, RFC 8037).
- :mod:`~firmware_agent.pod.chain`: issuing PODs (pure: no clock, no I/O).
- :mod:`~firmware_agent.pod.state`: where the chain stands, on disk.
- :mod:`~firmware_agent.pod.verify`: verifying a chain and naming its problems.
- :mod:`~firmware_agent.pod.cli`: ``fleet-agent pod verify`` / ``pod pubkey``.

docs/pod.md describes the claims, the chain rule and how backends verify PODs.
"""

from firmware_agent.pod.chain import GENESIS_PREV, ChainState, Pod, PodChain, pod_digest
from firmware_agent.pod.jws import JwsError, peek_claims, sign_compact, verify_compact
from firmware_agent.pod.keys import (
    KeyFileError,
    key_thumbprint,
    load_device_key,
    load_or_create_device_key,
    load_public_key,
    public_jwk,
    public_key_pem,
)
from firmware_agent.pod.state import ChainStateError, ChainStateStore, recover_state
from firmware_agent.pod.verify import (
    ChainReport,
    Problem,
    read_pod_file,
    read_pod_records,
    verify_chain,
)

__all__ = [
    "GENESIS_PREV",
    "ChainReport",
    "ChainState",
    "ChainStateError",
    "ChainStateStore",
    "JwsError",
    "KeyFileError",
    "Pod",
    "PodChain",
    "Problem",
    "key_thumbprint",
    "load_device_key",
    "load_or_create_device_key",
    "load_public_key",
    "peek_claims",
    "pod_digest",
    "public_jwk",
    "public_key_pem",
    "read_pod_file",
    "read_pod_records",
    "recover_state",
    "sign_compact",
    "verify_chain",
    "verify_compact",
]
