"""The doctor's observations: each probe does its I/O with a timeout and returns what
it saw (never raises for what a van can get wrong), for :mod:`.checks` to judge.

Blocking calls (files, evdev, GPIO, the outbox read) run in threads; the receiver and
the broker are read on the event loop. Nothing here writes to the van's state, the
receiver's configuration or a topic ingest stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from firmware_agent.contract.fix import Fix
from firmware_agent.contract.mqtt import TlsConfig
from firmware_agent.contract.topics import downlink_topic
from firmware_agent.doctor.checks import BrokerProbe, GnssObservation, KeyFile
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.filters import FilterConfig
from firmware_agent.service_state import STATE_FILE, ServiceState, read_state


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


async def read_gnss(port: str, baudrate: int, listen_s: float) -> GnssObservation:
    """Open ``port`` (exclusively, as the agent does) and decode what it says for
    ``listen_s``; every fix with the system time it arrived at."""
    import serial_asyncio_fast  # noqa: PLC0415 (van extra; only this probe needs it)

    exists = await asyncio.to_thread(os.path.exists, port)
    if not exists:
        return GnssObservation(port, exists=False, open_error=None)
    try:
        async with asyncio.timeout(5):
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=port, baudrate=baudrate, exclusive=True
            )
    except (OSError, ValueError, TimeoutError) as err:
        return GnssObservation(port, exists=True, open_error=_why(err))
    except Exception as err:  # serial.SerialException (an OSError subclass in pyserial 3.5)
        return GnssObservation(port, exists=True, open_error=_why(err))
    decoder = GnssDecoder(filters=FilterConfig.disabled())
    fixes: list[tuple[Fix, datetime]] = []
    n = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + listen_s
    try:
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    chunk = await reader.read(4096)
            except TimeoutError:
                break
            if not chunk:
                break
            n += len(chunk)
            arrived = _utcnow()
            fixes.extend((fix, arrived) for fix in decoder.feed(chunk))
    except OSError as err:
        return GnssObservation(port, exists=True, open_error=f"read failed: {_why(err)}")
    finally:
        # Closed for good (its lock released) before the UBX probe opens it again.
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    fixes.extend((fix, _utcnow()) for fix in decoder.flush())
    return GnssObservation(
        port, exists=True, open_error=None, fixes=tuple(fixes), bytes_read=n, listened_s=listen_s
    )


def open_serial_device(port: str, baudrate: int) -> str | None:
    """Open and close a serial scanner; None when it opened, else why not."""
    import serial  # noqa: PLC0415

    if not os.path.exists(port):
        return "does not exist"
    try:
        serial.Serial(port, baudrate, timeout=0, exclusive=True).close()
    except (OSError, ValueError) as err:
        return _why(err)
    return None


def open_hid_device(path: str) -> str | None:
    """Open a HID scanner's evdev node (not grabbed); None when it opened."""
    if not os.path.exists(path):
        return "does not exist"
    try:
        from evdev import InputDevice  # noqa: PLC0415

        InputDevice(path).close()
    except ImportError:
        return "python-evdev is not installed"
    except OSError as err:
        return _why(err)
    return None


def open_gpio(pins: object, buzzer_muted: bool) -> str | None:
    """Open the feedback's GPIO pins and release them; None when they opened."""
    from firmware_agent.errors import AgentError  # noqa: PLC0415
    from firmware_agent.feedback import DriverFeedback, FeedbackPins  # noqa: PLC0415

    assert isinstance(pins, FeedbackPins)
    try:
        feedback = DriverFeedback(pins, buzzer_muted=buzzer_muted)
    except (AgentError, OSError, ValueError) as err:
        return str(err)
    feedback.close()
    return None


async def probe_broker(
    *, host: str, port: int, tls: TlsConfig | None, device_id: str, timeout_s: float
) -> BrokerProbe:
    """Connect as the van would (its TLS files), with client id ``<device>-doctor``
    (the agent's own session is left alone), a clean session and no will; subscribe to
    the van's own ``manifest`` and ``config`` downlinks (retained: what the broker
    delivers shows the read ACL works) and disconnect; then, in a second connection,
    one empty QoS 1 publish to the van's own ``ack`` topic, which the broker must refuse
    (:func:`_puback`). Nothing else is published."""
    address = f"{host}:{port}"
    try:
        context = await asyncio.to_thread(tls.context) if tls is not None else None
    except (OSError, ValueError) as err:
        return BrokerProbe(address, tls is not None, f"TLS files: {_why(err)}")
    topics = [downlink_topic(device_id, kind) for kind in ("manifest", "config")]
    subscribed: list[tuple[str, int]] = []
    retained: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            async with aiomqtt.Client(
                host,
                port,
                identifier=f"{device_id}-doctor",
                protocol=aiomqtt.ProtocolVersion.V5,
                tls_context=context,
                timeout=timeout_s,
            ) as client:
                for topic in topics:
                    granted = await client.subscribe(topic, qos=1)
                    code = granted[0] if granted else 128
                    value = code if isinstance(code, int) else int(code.value)
                    subscribed.append((topic, value))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(1.0, timeout_s / 4)):
                        async for message in client.messages:
                            retained.append(str(message.topic).rsplit("/", 1)[-1])
                            if len(retained) == len(topics):
                                break
    except (aiomqtt.MqttError, OSError, TimeoutError) as err:
        return BrokerProbe(address, tls is not None, _why(err) or "timed out")
    ack = downlink_topic(device_id, "ack")
    own_ack = await asyncio.to_thread(
        _puback,
        host,
        port,
        context=context,
        client_id=f"{device_id}-doctor",
        topic=ack,
        timeout_s=timeout_s,
    )
    return BrokerProbe(
        address,
        tls is not None,
        None,
        subscribed=tuple(subscribed),
        retained=tuple(retained),
        own_ack=own_ack,
    )


def _puback(
    host: str,
    port: int,
    *,
    context: ssl.SSLContext | None,
    client_id: str,
    topic: str,
    timeout_s: float,
) -> int | None:
    """Publish an empty QoS 1 message to ``topic`` as the van; the PUBACK's reason code
    (None: no PUBACK in time, or no connection). The broker must refuse it (0x87): acks
    are what make a van delete records, and only ingest may send them. Should it take
    it, the van's own agent gets one empty ack, which it rejects as malformed: the probe
    is harmless either way. paho directly, not aiomqtt: aiomqtt drops PUBACK codes."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415 (only this probe)
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    codes: dict[int, int] = {}
    done = threading.Event()

    def on_publish(_c: object, _u: object, mid: int, reason: object, _p: object) -> None:
        codes[mid] = int(getattr(reason, "value", reason))  # type: ignore[call-overload]
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_publish = on_publish
    if context is not None:
        client.tls_set_context(context)
    try:
        client.connect(host, port, keepalive=max(5, int(timeout_s)))
    except (OSError, ValueError):
        return None
    client.loop_start()
    try:
        info = client.publish(topic, b"", qos=1)
        if not done.wait(timeout_s):
            return None
        return codes.get(info.mid)
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass(frozen=True, slots=True)
class StateDirReport:
    service_state: ServiceState | None
    service_state_error: str | None
    outbox_used_bytes: int | None
    outbox_error: str | None
    free_bytes: int


def read_state_dir(state_dir: Path) -> StateDirReport:
    """The agent's service state file, the outbox's used size (read-only: the agent
    may hold it), the free space of the state directory's file system. Blocking."""
    state: ServiceState | None = None
    state_error: str | None = None
    try:
        state = read_state(state_dir / STATE_FILE)
    except FileNotFoundError:
        state_error = "no service-state.json"
    except (OSError, ValueError) as err:
        state_error = _why(err)
    used: int | None = None
    outbox_error: str | None = None
    db = state_dir / "outbox.db"
    if db.exists():
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
            ) as conn:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
                size = conn.execute("PRAGMA page_size").fetchone()[0]
                used = (int(pages) - int(free)) * int(size)
        except sqlite3.Error as err:
            outbox_error = str(err)
    else:
        outbox_error = "no outbox yet"
    probe = state_dir if state_dir.exists() else state_dir.parent
    free_bytes = shutil.disk_usage(probe).free
    return StateDirReport(state, state_error, used, outbox_error, free_bytes)


def stat_key(label: str, path: Path, *, required: bool = True) -> KeyFile:
    try:
        st = path.stat()
    except OSError:
        return KeyFile(label, path, None, None, required)
    return KeyFile(label, path, st.st_mode, st.st_uid, required)
