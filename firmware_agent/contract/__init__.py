"""The contract: everything the van and ingest agree on, and nothing else.

Both sides of the wire import it; ingest imports nothing else of the van's package, and
the contract imports nothing of the van's own (tests/test_imports.py holds both rules),
so a module here can change only together with the other side, and a module outside
it is free to change. It needs no hardware library: installing ingest installs no
GPIO, serial or TFLite code. This package imports nothing itself: take the module
you need.

What is here, by module:

- :mod:`.topics`: MQTT topic names (``fleet/v1/{device_id}/...``, ``fleetstream/v1``).
- :mod:`.records`: the typed records a van publishes (a telemetry point, each event
  kind, a POD) with their one encoder and one decoder each, and the stored forms.
- :mod:`.telemetry`: the binary telemetry batch (docs/telemetry-batch.md).
- :mod:`.envelope`: the JSON envelope of events and PODs, ``ack`` and ``status``.
- :mod:`.wirejson`: the strict JSON every JSON payload is read and written with.
- :mod:`.times`: times on the wire (ISO 8601 UTC, milliseconds).
- :mod:`.fix`: what a receiver said about one epoch (:class:`~.fix.Fix`, gpsd's mode).
- :mod:`.pod`, :mod:`.jws`, :mod:`.keys`: POD claims, their JWS (EdDSA), the hash
  chain, key files and formats.
- :mod:`.parcels`: parcel codes, from a label to the canonical code a POD names.
- :mod:`.manifest`: the day's manifest (a downlink).
- :mod:`.model`, :mod:`.model_file`: the signed model downlink and the model file.
- :mod:`.eta_features`, :mod:`.eta_model`, :mod:`.geo`: the ETA features and the
  model's output, which training and the van must compute alike.
- :mod:`.eta_days`: the days ETA training reads (written by the simulator).
- :mod:`.schema`: the JSON Schemas (``schemas/``, also docs/schemas) and ``validate``
  (needs the ``jsonschema`` packages: ingest and the tests use it, the van does not).
- :mod:`.mqtt`, :mod:`.backoff`: the connection both sides make (TLS settings, the
  reconnect loop with capped, jittered backoff).
- :mod:`.errors`: the contract's exception tree.
"""
