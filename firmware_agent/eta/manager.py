"""The van's ETA model: which one runs, and the signed models the fleet sends it.

:class:`EtaManager` holds what ``fleet-agent run`` knows of its ETA model: at start,
off the event loop, it loads the fleet's model keys and the model to run (the stored
downlinked model if it verifies and loads, else the previous one: a rollback, else the
configured file, else the default shipped in the package,
``firmware_agent/eta/models/default.tflite``); a model problem gives the baseline
predictor, never a failed start. :meth:`EtaManager.downlink` installs a model sent on
the retained ``model`` topic (verified against the fleet keys, trial-loaded, stored
with the one it replaces kept as the previous, and only then handed to the pipeline),
or, on an empty payload, returns to the agent's own model. :meth:`EtaManager.health`
is its part of the status health (``eta_model``, ``eta_backend``, ``eta_unavailable``,
``eta_model_source``, ``models_refused``).

Moved out of :mod:`firmware_agent.agent` whole (issue 14): ``load_eta_predictor`` and
the agent's ``load_eta``, ``eta_predictor``, ``_own_model``, ``_model``,
``_clear_model`` and ``_eta_health``, which keep their bodies here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware_agent.contract.errors import ModelError, ModelUpdateError
from firmware_agent.contract.times import format_utc
from firmware_agent.errors import ModelUnavailableError
from firmware_agent.eta.model_store import (
    ModelStore,
    RunningModel,
    install_model,
    load_model_keys,
    start_model,
)
from firmware_agent.eta.predictor import EtaPredictor

log = logging.getLogger(__name__)

# The default ETA model, package data of firmware_agent.eta (trained by fleet-ingest
# train-eta); a build without it runs on the baseline.
SHIPPED_MODEL: tuple[str, str, str] = ("firmware_agent.eta", "models", "default.tflite")


@dataclass(frozen=True, slots=True, kw_only=True)
class EtaSettings:
    """The agent's ETA settings: on or off, its own model (None: the shipped one), the
    fleet's model keys (none: every model downlink is refused), the device."""

    eta: bool
    eta_model: Path | None
    model_keys: tuple[Path, ...]
    device_id: str


class ModelCounts(Protocol):
    """Where the manager counts model downlinks (the agent's counts)."""

    models: int
    models_refused: int


class PredictorUser(Protocol):
    """The pipeline, as the manager sees it."""

    def use_predictor(self, predictor: EtaPredictor) -> None: ...


def load_eta_predictor(model: Path | None = None) -> EtaPredictor:
    """The ETA predictor to run: ``model``, else the shipped default.

    Blocking (reads the file, builds the interpreter, one trial invoke): call it with
    :func:`asyncio.to_thread`. Raises nothing for what can go wrong with a model on a
    van: no shipped model, a file that cannot be read or that breaks the model contract
    (:class:`ModelError`), no interpreter here; each gives the baseline predictor with
    the reason in ``unavailable`` (logged as a warning, but for no shipped model).
    """
    started = time.perf_counter()
    if model is None:
        package, *parts = SHIPPED_MODEL
        resource = files(package).joinpath(*parts)
        name = f"shipped model {'/'.join(parts)}"
        try:
            if not resource.is_file():
                # A build without the model is a choice, not a fault: INFO, not WARNING.
                log.info("ETA on the baseline: no model shipped")
                return EtaPredictor.baseline("no model shipped")
            data = resource.read_bytes()
        except OSError as err:
            return _baseline(f"cannot read the {name}: {err}")
    else:
        name = f"model {model}"
        try:
            data = model.read_bytes()
        except OSError as err:
            return _baseline(f"cannot read {name}: {err.strerror or err}")
    try:
        predictor = EtaPredictor.load(data)
    except (ModelError, ModelUnavailableError) as err:
        return _baseline(f"{name} refused: {err}")
    if predictor.model_version is None:
        log.warning("ETA on the baseline: %s", predictor.unavailable)
    else:
        log.info(
            "ETA model %s loaded on %s in %.1f ms (%d bytes)",
            predictor.model_version,
            predictor.backend,
            (time.perf_counter() - started) * 1e3,
            len(data),
        )
    return predictor


def _baseline(reason: str) -> EtaPredictor:
    log.warning("ETA on the baseline: %s", reason)
    return EtaPredictor.baseline(reason)


class EtaManager:
    """The running ETA model and the model downlinks (see the module doc).

    ``counts``: where downlinks are counted (``models``, ``models_refused``);
    ``announce``: called when the status health changes (the uplink re-publishes it).
    """

    def __init__(
        self,
        config: EtaSettings,
        *,
        state_dir: Path,
        counts: ModelCounts,
        announce: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.counts = counts
        self.announce = announce
        # The ETA model handed to the pipeline (None before start, or with ETAs off):
        # its predictor, its source and, when downlinked, the signed update.
        self.eta_model: RunningModel | None = None
        self.model_store = ModelStore(state_dir / "eta")
        self._model_keys: tuple[Ed25519PublicKey, ...] = ()

    async def load_eta(self) -> EtaPredictor | None:
        """Load the fleet's model keys and the ETA predictor off the event loop (None
        with ETAs off): the stored downlinked model, else the previous one, else the
        configured or shipped model (:func:`~firmware_agent.eta.model_store.
        start_model`). A model problem gives the baseline, never an error; a model key
        file that cannot be used is a :class:`ConfigError`."""
        c = self.config
        if c.eta:
            self._model_keys = await asyncio.to_thread(load_model_keys, c.model_keys)
            running = await asyncio.to_thread(
                start_model,
                self.model_store,
                self._model_keys,
                device_id=c.device_id,
                fallback=self._own_model,
            )
            self.eta_model = running
        return self.eta_predictor

    @property
    def eta_predictor(self) -> EtaPredictor | None:
        """The predictor of :attr:`eta_model` (None before start, or with ETAs off)."""
        return self.eta_model.predictor if self.eta_model is not None else None

    def _own_model(self) -> RunningModel:
        """The agent's own model: ``eta_model``, else the shipped one. Blocking."""
        model = self.config.eta_model
        return RunningModel(
            predictor=load_eta_predictor(model), source="shipped" if model is None else "file"
        )

    async def downlink(self, payload: bytes, pipeline: PredictorUser) -> None:
        """Install a model downlink, or go back to the agent's own model on an empty one.

        Refused (:class:`ModelUpdateError`, which the uplink counts and logs once per
        kind), keeping the running model: a payload that does not verify against the
        fleet keys, a model issued no later than the running downlinked one, a model
        that does not load, a model that cannot be stored. The running model offered
        again (the retained copy, at every reconnect) changes nothing. The new model
        runs only once stored, so a restart runs what the van last reported. Every
        step that reads or writes files or builds an interpreter runs off the loop.
        """
        if not self.config.eta:
            log.info("ETAs are off: model downlink (%d bytes) ignored", len(payload))
            return
        running = self.eta_model
        assert running is not None
        new: RunningModel | None
        try:
            if payload:
                new = await asyncio.to_thread(
                    install_model,
                    self.model_store,
                    payload,
                    self._model_keys,
                    device_id=self.config.device_id,
                    running=running,
                )
            else:
                new = await self._clear_model(running)
        except ModelUpdateError:
            self.counts.models_refused += 1
            self.announce()  # models_refused is in the status health
            raise
        if new is None:
            log.debug("ETA model offered again: already running")
            return
        self.eta_model = new
        if new.predictor is not running.predictor:  # not so for a model signed again
            pipeline.use_predictor(new.predictor)
        self.counts.models += 1
        self.announce()  # the dispatcher sees the model now, not at reconnect
        if new.signed is not None and new.predictor is running.predictor:
            log.info(
                "ETA model %s signed again (issued %s, key %s): signature stored",
                new.signed.model_version,
                format_utc(new.signed.issued),
                new.signed.kid,
            )
        elif new.signed is not None:
            log.info(
                "ETA model %s installed (issued %s, key %s), replacing %s",
                new.signed.model_version,
                format_utc(new.signed.issued),
                new.signed.kid,
                running.predictor.model_version or "the baseline",
            )
        else:
            log.info(
                "ETA model cleared: back to the %s model %s",
                new.source,
                new.predictor.model_version or "(baseline)",
            )

    async def _clear_model(self, running: RunningModel) -> RunningModel | None:
        """Remove the stored models; the agent's own model to run, None if it runs it."""
        try:
            await asyncio.to_thread(self.model_store.clear)
        except OSError as err:
            raise ModelUpdateError(
                "storage", f"model clear: cannot remove the stored models: {err}"
            ) from err
        if running.source != "downlink":
            return None
        return await asyncio.to_thread(self._own_model)

    def health(self, tracker_predictor: EtaPredictor | None = None) -> dict[str, Any]:
        """Status health of ETAs; ``tracker_predictor``: the pipeline tracker's, once
        running (it falls back to the baseline if the model fails at run time)."""
        if not self.config.eta:
            return {"eta_model": "off"}
        predictor = tracker_predictor if tracker_predictor is not None else self.eta_predictor
        if predictor is None:
            return {}  # not loaded yet
        health: dict[str, Any] = {
            "eta_model": predictor.model_version or "baseline",
            "eta_backend": predictor.backend,
        }
        if predictor.model_version is None:
            health["eta_unavailable"] = predictor.unavailable
        if self.eta_model is not None:
            health["eta_model_source"] = self.eta_model.source
        health["models_refused"] = self.counts.models_refused
        return health
