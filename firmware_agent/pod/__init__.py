"""Signed proof of delivery (POD): Ed25519 JWS records linked in a hash chain.

- :mod:`~firmware_agent.contract.keys`: the device key file and public key formats.
- :mod:`~firmware_agent.contract.jws`: JWS compact sign/verify (EdDSA, RFC 8037).
- :mod:`~firmware_agent.pod.chain`: issuing PODs (pure: no clock, no I/O).
- :mod:`~firmware_agent.pod.state`: where the chain stands, on disk.
- :mod:`~firmware_agent.pod.verify`: verifying a chain and naming its problems.
- :mod:`~firmware_agent.pod.cli`: ``fleet-agent pod verify`` / ``pod pubkey``.

docs/pod.md describes the claims, the chain rule and how backends verify PODs.
"""
