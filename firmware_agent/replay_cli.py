"""``fleet-agent replay``: files in, JSON lines out (the I/O edge of :mod:`.replay`).

The replay predicts ETAs as the van does, with the same model (the one shipped in the
package, or ``--eta-model``; the baseline where neither loads), so its output holds the
``eta``, ``late_risk`` and ``stop_passed`` events the van would publish; ``--no-eta``
leaves them out.
Which model ran is said on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.keys import (
    KeyFileError,
    key_thumbprint,
    load_or_create_device_key,
    public_key_pem,
)
from firmware_agent.contract.manifest import ManifestError, load_manifest
from firmware_agent.contract.records import Record
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.faults import FaultCounter, format_counts
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.filters import FilterConfig
from firmware_agent.pod.chain import PodChain
from firmware_agent.replay import json_line, replay
from firmware_agent.scan.log import read_scan_log
from firmware_agent.scan.types import Scan
from firmware_agent.van import VanPipeline


def _fail(message: str) -> int:
    print(f"fleet-agent replay: {message}", file=sys.stderr)
    return 2


def _eta_predictor(args: argparse.Namespace) -> EtaPredictor | None:
    # getattr: callers that build their own Namespace (older scripts) need not know the
    # ETA options.
    if getattr(args, "no_eta", False):
        return None
    from firmware_agent.eta.manager import load_eta_predictor  # noqa: PLC0415 (lazy: fast --help)

    model = getattr(args, "eta_model", None)
    return load_eta_predictor(Path(model) if model else None)


def _eta_line(pipeline: VanPipeline) -> str:
    tracker = pipeline.eta_tracker
    if tracker is None:
        return "replay: ETA off"
    p = tracker.predictor
    which = (
        f"model {p.model_version} on {p.backend}"
        if p.model_version is not None
        else f"the baseline ({p.unavailable})"
    )
    c = tracker.counts
    return (
        f"replay: ETA by {which}: {c['predictions']} predictions, "
        f"{c['eta']} eta, {c['late_risk']} late_risk and {c['stop_passed']} stop_passed events"
    )


def run_replay(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest(Path(args.manifest))
    except ManifestError as err:
        return _fail(f"manifest {args.manifest}: {err}")
    scan_faults = FaultCounter()
    scans: list[Scan] = []
    if args.scans:
        try:
            with open(args.scans, encoding="utf-8", errors="replace") as lines:
                scans = list(read_scan_log(lines, scan_faults))
        except OSError as err:
            return _fail(f"cannot read {args.scans}: {err.strerror or err}")
    try:
        key = (
            load_or_create_device_key(Path(args.key)) if args.key else Ed25519PrivateKey.generate()
        )
    except KeyFileError as err:
        return _fail(str(err))
    if args.pubkey_out:
        Path(args.pubkey_out).write_bytes(public_key_pem(key.public_key()))
    filters = (
        FilterConfig.disabled()
        if args.no_filters
        else FilterConfig(max_speed_mps=args.max_speed_mps, max_lag_s=args.max_lag_s)
    )
    decoder = GnssDecoder(filters=filters)
    predictor = _eta_predictor(args)
    pipeline = VanPipeline(
        manifest,
        pods=PodChain(manifest.device_id, key),
        telemetry=not args.no_telemetry,
        eta=predictor,
    )
    try:
        nmea = sys.stdin.buffer if args.nmea == "-" else open(args.nmea, "rb")  # noqa: SIM115
    except OSError as err:
        return _fail(f"cannot read {args.nmea}: {err.strerror or err}")
    out: TextIO
    try:
        out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as err:
        return _fail(f"cannot write {args.out}: {err.strerror or err}")
    try:
        with nmea, out if out is not sys.stdout else contextlib.nullcontext():

            def emit(record: Record) -> None:
                out.write(json_line(record))

            summary = replay(nmea, scans, pipeline, emit, decoder=decoder)
            out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(summary.line(), file=sys.stderr)
    print(decoder.summary(), file=sys.stderr)
    print(_eta_line(pipeline), file=sys.stderr)
    faults = {**scan_faults.counts, **pipeline.faults.counts}
    if faults:
        print(f"replay: input faults: {format_counts(faults)}", file=sys.stderr)
    if not args.key:
        print(
            f"replay: PODs signed with a throwaway key (kid {key_thumbprint(key.public_key())});"
            " pass --key to keep one, --pubkey-out to verify them",
            file=sys.stderr,
        )
    return 0
