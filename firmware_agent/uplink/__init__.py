"""The uplink: the v1 MQTT contract's topics and payload codec, the outbox, the client.

``topics`` names every topic, ``codec`` encodes and decodes every payload with no I/O
(docs/asyncapi.yaml and docs/telemetry-batch.md are their contract).
"""
