"""Check firmware_agent.eta.interpreter under tflite-runtime, in tflite-runtime's own venv.

tflite-runtime needs NumPy < 2, so it cannot live in the project's environment; the test
``test_tflite_runtime_runs_the_model`` (tests/test_eta_tflite.py) makes a venv with only
tflite-runtime and NumPy 1 and runs this script there, with PYTHONPATH at the repo root.

    python tests/tflite_runtime_check.py MODEL.tflite CASES.npz METADATA.json

``CASES.npz`` holds ``x`` (inputs) and ``expected`` (the numpy reference's outputs);
``METADATA.json`` the metadata the model must carry. The script opens the model with
:class:`TfliteRunner`, checks the backend is tflite-runtime, predicts a full batch, a
partial batch and all of ``x`` (more than a batch), checks the metadata, and checks that
truncated and garbage files raise ``ModelError`` (tflite-runtime itself would crash on
them). It prints a JSON report and exits 0 when all holds, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from firmware_agent.contract.errors import ModelError
from firmware_agent.eta.interpreter import TfliteRunner, available_backend

MAX_ABS_ERROR = 1e-4


def main(argv: list[str]) -> int:
    model_path, cases_path, metadata_path = (Path(arg) for arg in argv)
    cases = np.load(cases_path)
    x, expected = cases["x"], cases["expected"]
    problems: list[str] = []

    runner = TfliteRunner.open(model_path)
    if available_backend() != "tflite-runtime" or runner.backend != "tflite-runtime":
        problems.append(f"backend is {runner.backend}, not tflite-runtime")
    errors = {}
    for label, n in (("full", runner.batch), ("partial", runner.batch // 3 + 1), ("all", len(x))):
        y = runner.predict(x[:n])
        errors[label] = float(np.abs(y - expected[:n]).max())
        if y.shape != (n, runner.n_outputs) or errors[label] > MAX_ABS_ERROR:
            problems.append(f"{label}: shape {y.shape}, max abs error {errors[label]:.3g}")
    expected_metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    if runner.metadata != expected_metadata:
        problems.append(f"metadata {runner.metadata!r} != {expected_metadata!r}")

    data = model_path.read_bytes()
    bad_files = [data[:n] for n in range(0, len(data), max(1, len(data) // 64))]
    bad_files += [b"garbage" * 40, b"TFL3" * 40]
    refused = 0
    for bad in bad_files:
        try:
            TfliteRunner.open(bad)
        except ModelError:
            refused += 1
    if refused != len(bad_files):
        problems.append(f"only {refused} of {len(bad_files)} bad files raised ModelError")

    report = {
        "backend": runner.backend,
        "numpy": np.__version__,
        "max_abs_error": errors,
        "metadata": runner.metadata,
        "bad_files_refused": refused,
        "problems": problems,
    }
    print(json.dumps(report))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
