"""The uplink: the durable outbox (``outbox``, and ``queue``, its asyncio face) and the
MQTT client (``mqtt``) that sends what the outbox holds and deletes what ingest acked.

The topics and payloads are the contract's (:mod:`firmware_agent.contract`): the outbox
stores each record's final bytes, and the client frames them without parsing them.
"""
