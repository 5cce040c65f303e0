"""The ETA model that ships inside the package, and how it was trained.

``default.tflite`` is the model every van starts with (until the fleet sends a newer
one on the ``model`` topic); ``default.json`` is its training record: the simulator
seeds and command that made it, the sizes, the validation figures, the date
(``fleet-ingest train-eta``, docs/eta.md). The same record is inside the .tflite file
(metadata ``training``).

Only the standard library here: the agent reads the bytes and hands them to
:meth:`firmware_agent.eta.predictor.EtaPredictor.load`.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

DEFAULT_MODEL = "default.tflite"
DEFAULT_RECORD = "default.json"


def default_model_bytes() -> bytes:
    """The shipped model file's bytes (:class:`OSError` if the package lacks it)."""
    return resources.files(__name__).joinpath(DEFAULT_MODEL).read_bytes()


def default_training_record() -> dict[str, Any]:
    """The shipped model's training record (``default.json``)."""
    text = resources.files(__name__).joinpath(DEFAULT_RECORD).read_text(encoding="utf-8")
    record: dict[str, Any] = json.loads(text)
    return record
