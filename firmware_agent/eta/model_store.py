"""The van's downlinked ETA models on disk, and which model it runs.

Files, under ``{state_dir}/eta/`` (0700), each the ``model`` payload as received (the
signature and the .tflite bytes, :mod:`firmware_agent.contract.model`), so that it
is verified again at every start, against the keys configured then:

- ``current.model``: the downlinked model the van runs;
- ``previous.model``: the downlinked model that ran before it, if one did (none when
  the van ran its shipped or configured model then): what the van rolls back to when
  ``current.model`` no longer verifies or loads.

Each is written whole or not at all (:func:`~firmware_agent.contract.keys.
write_file_atomically`: temporary file, fsync, rename, directory fsync). An empty
``model`` payload (the fleet clears the retained model) removes both: the van runs the
model of its package (or ``[eta] model``) again, and nothing the fleet withdrew comes
back at a restart or as a rollback target.

Which model runs (:func:`start_model`): ``current.model`` if it verifies and loads;
else ``previous.model`` (a rollback, logged as a warning); else the fallback, the model
shipped in the package or the configured file. A downlink (:func:`install_model`) is
verified, admitted by the ordering rule, loaded (the model contract, a trial invoke),
and only then stored, the running model becoming ``previous.model``; it replaces the
running model only after all of that succeeded. The running model's file signed again
(a key rotation) only replaces the signature stored in ``current.model``.

Everything here blocks (file I/O, key loading, building an interpreter): the agent
calls it with :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware_agent.contract.errors import ModelError, ModelUpdateError
from firmware_agent.contract.keys import (
    KeyFileError,
    fsync_directory,
    load_public_key,
    make_private_dirs,
    write_file_atomically,
)
from firmware_agent.contract.model import MAX_PAYLOAD_BYTES, SignedModel, admit_model, verify_model
from firmware_agent.contract.times import format_utc
from firmware_agent.errors import ConfigError
from firmware_agent.eta.predictor import EtaPredictor

log = logging.getLogger(__name__)

ModelSource = Literal["shipped", "file", "downlink"]
CURRENT: Final = "current.model"
PREVIOUS: Final = "previous.model"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningModel:
    """The ETA predictor the van runs and where it came from: ``shipped`` (the
    package's model), ``file`` (``AgentConfig.eta_model``) or ``downlink`` (the
    ``model`` topic; ``signed`` is then the verified update)."""

    predictor: EtaPredictor
    source: ModelSource
    signed: SignedModel | None = None


class ModelStore:
    """``current.model`` and ``previous.model`` in ``directory`` (module doc).

    Blocking: call it off the event loop.
    """

    __slots__ = ("directory",)

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __repr__(self) -> str:
        return f"ModelStore({str(self.directory)!r})"

    @property
    def current(self) -> Path:
        return self.directory / CURRENT

    @property
    def previous(self) -> Path:
        return self.directory / PREVIOUS

    @staticmethod
    def read(path: Path) -> bytes | None:
        """The payload stored at ``path``, None when there is none; other
        :class:`OSError` propagate. Reads at most one byte past the largest payload a
        van accepts, which the verification then refuses."""
        try:
            with path.open("rb") as f:
                return f.read(MAX_PAYLOAD_BYTES + 1)
        except FileNotFoundError:
            return None

    def install(self, new: bytes, previous: bytes | None) -> None:
        """Store ``new`` as ``current.model`` and ``previous`` as ``previous.model``
        (None removes it).

        ``previous`` is the payload of the model running, not the file on disk: after a
        rollback at start, ``current.model`` holds the model that failed, which must
        not become the next rollback target. The previous model is written first, so
        a power cut in between leaves the old current model as both.
        """
        make_private_dirs(self.directory)
        if previous is None:
            self._remove(self.previous)
        else:
            write_file_atomically(self.previous, previous, overwrite=True)
        write_file_atomically(self.current, new, overwrite=True)

    def replace_current(self, new: bytes) -> None:
        """Store ``new`` as ``current.model``, ``previous.model`` untouched."""
        make_private_dirs(self.directory)
        write_file_atomically(self.current, new, overwrite=True)

    def clear(self) -> bool:
        """Remove both files; whether there was anything to remove.

        ``previous.model`` goes first: a power cut in between leaves the cleared model
        as current (the retained clear comes again), never as a rollback target alone.
        """
        removed = self._remove(self.previous)
        return self._remove(self.current) or removed

    @staticmethod
    def _remove(path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_directory(path.parent)
        return True


def load_model_keys(paths: Sequence[Path]) -> tuple[Ed25519PublicKey, ...]:
    """The fleet's model keys (PEM or JWK public keys); :class:`ConfigError` naming
    the file that cannot be used: a key configured is meant to be used, and a typo
    must not silently leave the van refusing every model."""
    keys = []
    for path in paths:
        try:
            keys.append(load_public_key(path))
        except KeyFileError as err:
            raise ConfigError(f"eta model key: {err}") from err
    return tuple(keys)


def load_signed(
    payload: bytes, keys: Sequence[Ed25519PublicKey], *, device_id: str
) -> tuple[SignedModel, EtaPredictor]:
    """Verify ``payload`` and load its model (the contract, a trial invoke).

    :class:`ModelUpdateError` for a payload that does not verify or a model that does
    not load (``not_a_model``, the :class:`ModelError` as its cause). A van without an
    interpreter gets a baseline predictor that says why, as for a shipped model.
    """
    signed = verify_model(payload, keys, device_id=device_id)
    return signed, _predictor(signed)


def _predictor(signed: SignedModel) -> EtaPredictor:
    try:
        return EtaPredictor.load(signed.model)
    except ModelError as err:
        raise ModelUpdateError(
            "not_a_model", f"model {signed.model_version} refused: {err}"
        ) from err


def start_model(
    store: ModelStore,
    keys: Sequence[Ed25519PublicKey],
    *,
    device_id: str,
    fallback: Callable[[], RunningModel],
) -> RunningModel:
    """The model to start on: ``current.model``, else ``previous.model`` (a rollback,
    logged as a warning), else ``fallback()``. A stored file that cannot be read, no
    longer verifies (a key removed from the configuration, a corrupt file) or does not
    load is logged and passed over; it stays on disk until the next model or clear."""
    for path in (store.current, store.previous):
        try:
            payload = store.read(path)
        except OSError as err:
            log.warning("ETA model %s unreadable: %s", path, err.strerror or err)
            continue
        if payload is None:
            continue
        try:
            signed, predictor = load_signed(payload, keys, device_id=device_id)
        except ModelUpdateError as err:
            log.warning("ETA model %s refused: %s", path, err)
            continue
        if path == store.previous:
            log.warning(
                "ETA model rolled back to the previous one, %s (%s)", signed.model_version, path
            )
        else:
            log.info(
                "ETA model %s (downlinked, issued %s) loaded from %s",
                signed.model_version,
                format_utc(signed.issued),
                path,
            )
        return RunningModel(predictor=predictor, source="downlink", signed=signed)
    return fallback()


def install_model(
    store: ModelStore,
    payload: bytes,
    keys: Sequence[Ed25519PublicKey],
    *,
    device_id: str,
    running: RunningModel,
) -> RunningModel | None:
    """Verify, admit, load and store a ``model`` downlink; the model to run now, or
    None when ``payload`` is the running model again (nothing to do).

    Raises :class:`ModelUpdateError` for a refused update (not verified, stale, not
    loadable, or not stored: ``storage``); nothing has changed then, on disk or in
    ``running``.
    """
    signed = verify_model(payload, keys, device_id=device_id)
    if not admit_model(running.signed, signed):
        return None
    try:
        if running.signed is not None and running.signed.sha256 == signed.sha256:
            # The running model signed again (a key rotation): the same bytes, so the
            # same predictor and rollback target; only the stored signature changes,
            # which must verify at the next start once the old key is gone.
            store.replace_current(signed.payload)
            return RunningModel(predictor=running.predictor, source="downlink", signed=signed)
        predictor = _predictor(signed)
        previous = running.signed.payload if running.signed is not None else None
        store.install(signed.payload, previous)
    except OSError as err:
        raise ModelUpdateError(
            "storage", f"model {signed.model_version} not stored: {err.strerror or err}"
        ) from err
    return RunningModel(predictor=predictor, source="downlink", signed=signed)
