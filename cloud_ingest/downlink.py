"""Retained downlinks to vans from the command line (``fleet-ingest publish-model``).

:func:`publish_retained` connects with the ingest service's MQTT settings (host, port,
TLS; :class:`~cloud_ingest.config.MqttSettings`), publishes each message retained at
QoS 1, waits for every PUBACK and disconnects. On a broker run with the shipped ACLs
(docs/mosquitto/fleet-services.acl) only the ``dispatcher`` role may write
``fleet/v1/+/model``: give the command a settings file whose ``tls_cert`` is the
dispatcher's certificate.

paho-mqtt rather than aiomqtt, on purpose: aiomqtt's ``publish`` returns on the
PUBACK without its reason code, so a publish the broker's ACL refused (MQTT 5 PUBACK
0x87, Not authorized, and the message dropped) would pass for a success. A one-shot
command has no event loop to share; paho's own network thread is enough. Blocking.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cloud_ingest.config import MqttSettings
from cloud_ingest.errors import IngestError
from cloud_ingest.service import mqtt_tls

DEFAULT_TIMEOUT_S = 10.0


class PublishError(IngestError, OSError):
    """The broker could not be reached, refused the connection, or refused or did not
    acknowledge a publish in time; the message names the topic and the reason."""


def publish_retained(
    settings: MqttSettings,
    messages: Sequence[tuple[str, bytes]],
    *,
    client_id: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """Publish each ``(topic, payload)`` retained at QoS 1 (an empty payload deletes
    the topic's retained message); return each PUBACK's reason (``"Success"``, or
    ``"No matching subscribers"`` when no van listens now: retained all the same).

    ``client_id`` defaults to ``{settings.client_id}-publish``, apart from the
    workers' ids. Raises :class:`PublishError` at the first failure (what was published
    before it stays published) and :class:`~cloud_ingest.errors.ConfigError` for a TLS
    file that is not there.
    """
    tls = mqtt_tls(settings)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{settings.client_id}-publish",
        protocol=mqtt.MQTTv5,
    )
    where = f"{settings.host}:{settings.port}"
    connected = threading.Event()
    connect_reason: list[ReasonCode] = []
    pubacks: dict[int, ReasonCode] = {}

    def on_connect(
        _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        connect_reason.append(reason)
        connected.set()

    def on_publish(
        _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        # Called from paho's thread, possibly before publish() returned its mid: a dict
        # by mid, read only after wait_for_publish, needs no more than the GIL.
        pubacks[mid] = reason

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        if tls is not None:
            client.tls_set_context(tls.context())
        client.connect(settings.host, settings.port, keepalive=30)
    except OSError as err:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
        raise PublishError(f"cannot connect to the broker {where}: {err}") from err
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise PublishError(f"no answer from the broker {where} in {timeout_s:g} s")
        if connect_reason[0].is_failure:
            raise PublishError(f"the broker {where} refused the connection: {connect_reason[0]}")
        infos = [
            (topic, client.publish(topic, payload, qos=1, retain=True))
            for topic, payload in messages
        ]
        reasons = []
        for topic, info in infos:
            try:
                info.wait_for_publish(timeout_s)
            except (ValueError, RuntimeError) as err:  # not queued: connection lost
                raise PublishError(f"{topic}: not published: {err}") from err
            reason = pubacks.get(info.mid)
            if not info.is_published() or reason is None:
                raise PublishError(f"{topic}: no PUBACK from {where} in {timeout_s:g} s")
            if reason.is_failure:
                raise PublishError(f"{topic}: refused by the broker: {reason}")
            reasons.append(str(reason))
        return reasons
    finally:
        client.disconnect()
        client.loop_stop()
