"""An agent that is built but not run, for tests of what it loads at start, and the
``fleet-agent run`` flags that configure one."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from firmware_agent.agent import Agent, AgentConfig
from firmware_agent.run_cli import register
from firmware_agent.uplink.mqtt import UplinkConfig


def idle_agent(tmp_path: Path, *, device_id: str = "van-1", **config: Any) -> Agent:
    """An :class:`Agent` on an empty NMEA file, state in ``tmp_path/state``, broker port
    0 (never connected); ``config`` goes to :class:`AgentConfig`."""
    nmea = tmp_path / "none.nmea"
    nmea.write_bytes(b"")
    return Agent(
        AgentConfig(
            state_dir=tmp_path / "state",
            uplink=UplinkConfig(device_id=device_id, port=0),
            nmea_file=nmea,
            **config,
        )
    )


def health_after_load(agent: Agent) -> dict[str, Any]:
    """The agent's status health once it has loaded its ETA model (as at start)."""
    asyncio.run(agent.load_eta())
    return agent.health()


def run_args(*argv: str) -> argparse.Namespace:
    """``fleet-agent run`` flags as its parser reads them."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["run", *argv])
