"""Training the ETA model: rows from the days the simulator writes and from ingest's
history, numpy training, the exported .tflite file, ``fleet-ingest train-eta`` and the
shipped model.

The rows are checked against the simulator's truth directly (labels to the microsecond,
only unserved stops); the trained model must beat the baseline on held-out days of a
small run (a real comparison: it can fail); the interpreter must agree with the numpy
forward pass within 1e-4 (issue 5).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_ingest.cli import main as ingest_main
from cloud_ingest.errors import ConfigError
from cloud_ingest.eta.dataset import (
    Day,
    EtaDataset,
    build_dataset,
    day_rows,
    read_days,
    store_days,
)
from cloud_ingest.eta.tflite_export import mlp_forward
from cloud_ingest.eta.train import (
    EXPORT_BATCH,
    TrainConfig,
    TrainingError,
    day_source,
    default_model_version,
    export_model,
    fit_calibration,
    is_simulated,
    source_weights,
    split_days,
    train,
    training_record,
    trip_halt_s,
)
from cloud_ingest.store.base import Position, StopEvent, WriteBatch
from cloud_ingest.store.sqlite import SqliteStore
from firmware_agent.contract.eta_features import (
    FEATURE_NAMES,
    FEATURES_VERSION,
    N_FEATURES,
    FeatureMatrix,
)
from firmware_agent.contract.eta_model import OUTPUT_LOG_RATIO, answer, log_ratio_target
from firmware_agent.contract.manifest import Manifest
from firmware_agent.contract.model_file import read_metadata
from firmware_agent.contract.records import PodRecord, TelemetryPoint
from firmware_agent.eta.interpreter import TfliteRunner, available_backend
from firmware_agent.eta.models import default_model_bytes, default_training_record
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.pod.chain import PodChain
from firmware_agent.van import VanPipeline
from simulator.cli import main as sim_main
from simulator.eta_days import simulator_day, trained_seeds, write_days

MAX_ABS_ERROR = 1e-4
DEVICE = "van-0007"
STOPS_COL = FEATURE_NAMES.index("stops_before")
# A small, quick training run: enough for a real comparison with the baseline.
SMALL = TrainConfig(
    hidden=(16, 16), max_epochs=40, patience=8, batch_size=128, ensemble=2, val_fraction=0.25
)

needs_interpreter = pytest.mark.skipif(
    available_backend() is None, reason="no TFLite interpreter installed"
)


@pytest.fixture(scope="module")
def tiny_day() -> Day:
    return simulator_day(7, n_stops=3)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> EtaDataset:
    """Twelve simulator days of eight stops (seeds never used elsewhere in this file),
    written by the simulator and read back as training reads them."""
    out = tmp_path_factory.mktemp("days")
    write_days(out, seeds=range(300, 312), n_stops=8, jobs=2)
    return build_dataset(read_days([out]))


# -- rows ---------------------------------------------------------------------------------


def test_rows_are_the_unserved_stops_labelled_with_the_true_arrival(tiny_day: Day) -> None:
    rows = day_rows(tiny_day)
    stops = tiny_day.manifest.stops
    arrivals = [tiny_day.arrivals[s.id] for s in stops]
    assert len(rows) > 0
    assert rows.x.shape == (len(rows), N_FEATURES)
    assert rows.x.dtype == np.float32
    issued = np.unique(rows.issued_us)
    # One sample per 30 s grid step, at the first fix at or after the grid time: on it,
    # unless the receiver had no fix then (a tunnel, an outage).
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = next(f.time for f in tiny_day.fixes if f.time is not None)
    origin_us = (first - epoch) // timedelta(microseconds=1)
    grid_step, late_us = np.divmod(issued - origin_us, 30_000_000)
    assert (np.diff(grid_step) >= 1).all()
    assert (late_us < 10_000_000).all()
    assert (late_us == 0).mean() > 0.8
    for t_us in issued:
        now = epoch + timedelta(microseconds=int(t_us))
        at = np.flatnonzero(rows.issued_us == t_us)
        got_stops = rows.stop_index[at].tolist()
        # Exactly the stops not reached yet, in stop order.
        assert got_stops == [i for i, t in enumerate(arrivals) if t > now]
        # The next stop's label is its true arrival minus now, to the microsecond.
        nxt = got_stops[0]
        assert rows.actual_s[at[0]] == (arrivals[nxt] - now).total_seconds()
        assert rows.x[at, STOPS_COL].tolist() == list(range(len(at)))
    assert (rows.actual_s > 0).all()
    np.testing.assert_array_equal(rows.naive_s, rows.x[:, FEATURE_NAMES.index("chain_naive_s")])
    np.testing.assert_allclose(rows.y_target, log_ratio_target(rows.actual_s, rows.naive_s))
    # The dwell: while the van stands at a reached stop (arrival to departure), the
    # seconds since its arrival; 0 while driving.
    departures = [tiny_day.departures[s.id] for s in stops]
    dwell = rows.x[:, FEATURE_NAMES.index("dwell_s")]
    for t_us in issued:
        now = epoch + timedelta(microseconds=int(t_us))
        at = np.flatnonzero(rows.issued_us == t_us)
        standing = [i for i in range(len(stops)) if arrivals[i] <= now < departures[i]]
        want = (now - arrivals[standing[0]]).total_seconds() if standing else 0.0
        assert dwell[at] == pytest.approx(want, abs=1e-3)
    assert (dwell > 0).any()
    assert (dwell == 0).any()


def test_without_departures_the_rows_take_the_geofence_exit(tiny_day: Day) -> None:
    """A day without departures.json (an old day, the store) derives them: the first fix
    outside the stop's radius; the dwell then ends within seconds of the true one."""
    with_truth = day_rows(tiny_day)
    derived = day_rows(replace(tiny_day, departures={}))
    col = FEATURE_NAMES.index("dwell_s")
    a, b = with_truth.x[:, col], derived.x[:, col]
    assert ((a > 0) == (b > 0)).mean() > 0.9
    assert np.abs(a - b).max() < 120


def test_a_stop_without_a_known_arrival_gives_no_rows_but_stays_unserved(tiny_day: Day) -> None:
    last = tiny_day.manifest.stops[-1].id
    partial = replace(tiny_day, arrivals={k: v for k, v in tiny_day.arrivals.items() if k != last})
    rows = day_rows(partial)
    full = day_rows(tiny_day)
    assert 2 not in rows.stop_index.tolist()
    # The other stops' rows are unchanged: the features still count the last stop.
    keep = full.stop_index != 2
    np.testing.assert_array_equal(rows.x, full.x[keep])
    np.testing.assert_array_equal(rows.actual_s, full.actual_s[keep])


def test_datasets_concatenate_with_their_days_renumbered(tiny_day: Day) -> None:
    one = day_rows(tiny_day)
    both = build_dataset([tiny_day, replace(tiny_day, name="again")])
    assert len(both) == 2 * len(one)
    assert both.day_names == (tiny_day.name, "again")
    assert set(both.groups.tolist()) == {0, 1}
    assert len(both.days(["again"])) == len(one)


# -- ingest's history ---------------------------------------------------------------------


def _fill_store(path: Path, day: Day) -> list[dict[str, object]]:
    """Run the van pipeline over ``day`` and store what ingest would have received:
    the telemetry positions and the events. Returns the arrival messages."""
    manifest = day.manifest
    pipeline = VanPipeline(manifest, pods=PodChain(DEVICE, Ed25519PrivateKey.generate()))
    positions: list[Position] = []
    events: list[StopEvent] = []
    arrivals: list[dict[str, object]] = []
    for fix in day.fixes:
        for record in pipeline.on_fix(fix):
            if isinstance(record, TelemetryPoint):
                positions.append(Position(DEVICE, len(positions) + 1, False, record))
            elif not isinstance(record, PodRecord):
                events.append(StopEvent(DEVICE, len(events) + 1, False, record))
                if record.type == "arrival":
                    arrivals.append(record.to_json())

    async def write() -> None:
        async with SqliteStore(path) as store:
            await store.migrate()
            await store.register_device(DEVICE, bytes(32))
            await store.write(WriteBatch(positions=positions, events=events))

    asyncio.run(write())
    return arrivals


def _stored_days(path: Path) -> list[Day]:
    async def read() -> list[Day]:
        async with SqliteStore(path) as store:
            return await store_days(store)

    return asyncio.run(read())


def test_stored_history_gives_rows_in_the_same_format(tmp_path: Path) -> None:
    sim = simulator_day(11, n_stops=4)
    arrivals = _fill_store(tmp_path / "ingest.sqlite3", sim)
    assert len(arrivals) == 4

    (day,) = _stored_days(tmp_path / "ingest.sqlite3")
    manifest: Manifest = day.manifest
    # The stop list is rebuilt from the arrivals, in arrival order, where the van stood.
    assert [s.id for s in manifest.stops] == [m["stop_id"] for m in arrivals]
    assert [(s.lat, s.lon) for s in manifest.stops] == [(m["lat"], m["lon"]) for m in arrivals]
    assert {s.type for s in manifest.stops} == {"other"}
    assert manifest.route is not None
    assert manifest.route_id == arrivals[0]["route_id"]

    rows = day_rows(day)
    sim_rows = day_rows(sim)
    assert len(rows) > 0
    for name in ("x", "y_target", "actual_s", "naive_s", "groups", "issued_us", "stop_index"):
        got, want = getattr(rows, name), getattr(sim_rows, name)
        assert (got.dtype, got.shape[1:]) == (want.dtype, want.shape[1:]), name
    # Labels are the stored arrival times minus the sample time.
    arrival_us = {
        m["stop_id"]: (datetime.fromisoformat(str(m["time"])) - datetime(1970, 1, 1, tzinfo=UTC))
        // timedelta(microseconds=1)
        for m in arrivals
    }
    stop_ids = [s.id for s in manifest.stops]
    want_s = [
        (arrival_us[stop_ids[k]] - t) / 1e6
        for k, t in zip(rows.stop_index, rows.issued_us, strict=True)
    ]
    np.testing.assert_array_equal(rows.actual_s, want_s)
    # The geofence's arrivals are within seconds of the truth: the labels agree.
    for m in arrivals:
        truth = sim.arrivals[str(m["stop_id"])]
        assert abs((datetime.fromisoformat(str(m["time"])) - truth).total_seconds()) < 30


# -- training -----------------------------------------------------------------------------


def test_training_is_deterministic_for_a_seed(small_set: EtaDataset) -> None:
    config = replace(SMALL, max_epochs=3, ensemble=2)
    a, b = train(small_set, config), train(small_set, config)
    c = train(small_set, replace(config, seed=1))
    assert a.val_days == b.val_days
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(la.weights, lb.weights)
        np.testing.assert_array_equal(la.bias, lb.bias)
    assert not np.array_equal(a.layers[1].weights, c.layers[1].weights)


def test_the_model_beats_the_baseline_on_held_out_days(small_set: EtaDataset) -> None:
    result = train(small_set, SMALL)
    assert set(result.val_days).isdisjoint(result.train_days)
    assert result.n_val > 0
    assert result.val_model.mae_s < result.val_baseline.mae_s, (
        f"model {result.val_model.mae_s:.1f} s, baseline {result.val_baseline.mae_s:.1f} s"
    )


def test_excluded_features_carry_no_weight(small_set: EtaDataset) -> None:
    """An excluded column (by default the simulator-only ones) cannot move the answer,
    however far it is pushed; a used one does."""
    result = train(small_set, replace(SMALL, max_epochs=2))
    assert "hdop" in result.config.exclude
    x = small_set.x[:50].copy()
    base = mlp_forward(result.layers, x)[:, 0]
    pushed = x.copy()
    for name in result.config.exclude:
        pushed[:, FEATURE_NAMES.index(name)] += 1e3
    np.testing.assert_array_equal(mlp_forward(result.layers, pushed)[:, 0], base)
    moved = x.copy()
    moved[:, FEATURE_NAMES.index("dwell_s")] += 600.0
    assert not np.array_equal(mlp_forward(result.layers, moved)[:, 0], base)


def test_real_days_get_their_share_and_are_held_out_alike(small_set: EtaDataset) -> None:
    """Six real trips' two manifests each (``bus-K``, ``h60-bus-K``: the same fixes) and
    six simulator days: both kinds are held out, a trip's manifests together."""
    names = tuple(
        n if i % 3 == 2 else f"{'h60-' if i % 3 else ''}bus-{i // 3}"
        for i, n in enumerate(small_set.day_names)
    )
    assert len(set(names)) == len(names)
    mixed = replace(small_set, day_names=names)
    weights = source_weights(mixed, 0.5)
    real = np.array([not is_simulated(names[g]) for g in mixed.groups])
    assert 0 < real.mean() < 1
    assert weights[real].sum() == pytest.approx(weights[~real].sum())
    assert weights.mean() == pytest.approx(1.0)
    assert trip_halt_s("h60-bus-1") == 60.0
    assert trip_halt_s("bus-1") is None
    assert day_source("h60-bus-1") == day_source("trip-bus-1") == "bus-1"
    for split_seed in range(5):
        train_days, val_days = split_days(mixed, 0.25, split_seed)
        assert any(is_simulated(n) for n in val_days)
        assert any(not is_simulated(n) for n in val_days)
        assert any(not is_simulated(n) for n in train_days)
        for k in range(4):
            assert (f"bus-{k}" in val_days) == (f"h60-bus-{k}" in val_days)


def test_the_calibration_comes_from_out_of_fold_real_trips(small_set: EtaDataset) -> None:
    names = tuple(
        n if i % 3 == 2 else f"{'h60-' if i % 3 else ''}bus-{i // 3}"
        for i, n in enumerate(small_set.day_names)
    )
    mixed = replace(small_set, day_names=names)
    config = replace(SMALL, max_epochs=2, ensemble=1, calibration_folds=2, min_calibration_rows=1)
    result = train(mixed, config)
    assert result.calibration is not None
    assert result.calibration_on.startswith("out-of-fold (2 folds of real trips)")
    long_rows = sum(
        int((mixed.groups == g).sum()) for g, n in enumerate(names) if n.startswith("h60-")
    )
    assert result.calibration_rows == long_rows
    # Without real recordings to fold, the held-out days calibrate it.
    plain = train(small_set, config)
    assert plain.calibration_on == "held-out days"
    with pytest.raises(ConfigError):
        TrainConfig(calibration_folds=1)


def test_calibration_shrinks_a_harmful_correction_and_covers_eight_in_ten() -> None:
    """Short horizons: the model's correction only adds noise (shrink 0, the naive
    ETA); long: it is right (shrink 1). The interval covers ~80 % of the fitting rows."""
    rng = np.random.default_rng(1)
    n = 4000
    anchor = np.where(np.arange(n) % 2 == 0, rng.uniform(30, 250, n), rng.uniform(1000, 1700, n))
    truth_ratio = np.where(anchor < 300, 0.0, 0.4)
    actual = (anchor + 60) * np.exp(truth_ratio + rng.normal(0, 0.2, n)) - 60
    model = np.where(anchor < 300, rng.normal(0, 0.8, n), 0.4)
    cal = fit_calibration(anchor, model, actual)
    buckets = cal.bucket(anchor)
    assert cal.shrink[0] == 0.0
    assert cal.shrink[2] >= 0.9
    assert cal.shrink[4] == 0.0  # no rows beyond an hour: no evidence, the naive ETA
    got = answer(anchor, model, cal)
    assert got.p10_s is not None
    assert got.p90_s is not None
    inside = (actual >= got.p10_s) & (actual <= got.p90_s)
    for b in (0, 2):
        assert 0.75 <= inside[buckets == b].mean() <= 0.85


def test_training_needs_two_days(tiny_day: Day) -> None:
    with pytest.raises(TrainingError, match="two days"):
        train(day_rows(tiny_day), SMALL)


@needs_interpreter
def test_the_exported_model_runs_as_trained(small_set: EtaDataset) -> None:
    result = train(small_set, replace(SMALL, max_epochs=3))
    trained_at = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    version = default_model_version(result.layers, trained_at)
    record = training_record(
        result, model_version=version, trained_at=trained_at, sources={"test": True}
    )
    model = export_model(result, record)

    metadata = read_metadata(model)
    assert metadata["features_version"] == FEATURES_VERSION
    assert metadata["output"] == OUTPUT_LOG_RATIO
    assert metadata["model_version"] == version
    assert version.startswith("eta-20261121-")
    assert json.loads(metadata["training"]) == json.loads(json.dumps(record))
    assert json.loads(metadata["features"]) == list(FEATURE_NAMES)

    runner = TfliteRunner.open(model)
    assert (runner.batch, runner.n_inputs, runner.n_outputs) == (EXPORT_BATCH, N_FEATURES, 1)
    # Real rows, and rows pushed beyond the training range (the clip layer at work).
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [small_set.x, small_set.x[:500] * rng.uniform(0.0, 3.0, (500, N_FEATURES))]
    ).astype(np.float32)
    got = runner.predict(x)[:, 0]
    want = mlp_forward(result.layers, x)[:, 0]
    assert np.abs(got - want).max() <= MAX_ABS_ERROR
    # The agent's path (EtaPredictor) answers what training measured.
    predictor = EtaPredictor.load(model)
    assert predictor.model_version == version
    rows = small_set.x[:EXPORT_BATCH]
    prediction = predictor.predict(FeatureMatrix(rows, ("",) * len(rows)))
    np.testing.assert_allclose(
        prediction.eta_s + 60.0,
        result.predict_s(rows, small_set.naive_s[:EXPORT_BATCH]) + 60.0,
        rtol=1e-3,
    )


# -- the command --------------------------------------------------------------------------


@needs_interpreter
def test_train_eta_end_to_end_writes_a_model_the_agent_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ingest.sqlite3"
    _fill_store(db, simulator_day(12, n_stops=3))
    days = tmp_path / "days"
    assert sim_main(["eta-days", "--seeds", "401-403", "--stops", "3", "--out", str(days)]) == 0
    out, record = tmp_path / "model.tflite", tmp_path / "model.json"
    code = ingest_main(
        [
            "train-eta",
            "--database-url",
            f"sqlite:///{db}",
            "--from-store",
            "--days",
            str(days),
            "--epochs",
            "2",
            "--model-version",
            "eta-test-1",
            "--out",
            str(out),
            "--record",
            str(record),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "model_version eta-test-1" in printed
    assert "validation MAE: model" in printed
    predictor = EtaPredictor.load(out.read_bytes())
    assert predictor.model_version == "eta-test-1"
    saved = json.loads(record.read_text(encoding="utf-8"))
    assert saved["sources"]["days"]["days"] == ["sim-401", "sim-402", "sim-403"]
    assert saved["sources"]["store"]["routes"] == 1
    assert saved["command"].startswith(f"fleet-ingest train-eta --days {days} ")
    assert json.loads(read_metadata(out.read_bytes())["training"]) == saved


def test_train_eta_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "m.tflite")
    assert ingest_main(["train-eta", "--out", out]) == 2
    assert "nothing to learn from" in capsys.readouterr().err
    # A path with no day in it is a mistake, not an empty training set.
    assert ingest_main(["train-eta", "--days", str(tmp_path), "--out", out]) == 2
    assert "no day here" in capsys.readouterr().err
    # One day cannot be split into training and validation days: the command fails.
    write_days(tmp_path / "one", seeds=[9], n_stops=2)
    assert ingest_main(["train-eta", "--days", str(tmp_path / "one"), "--out", out]) == 1
    assert "two days" in capsys.readouterr().err


# -- the shipped model --------------------------------------------------------------------


def test_the_shipped_model_loads_and_matches_its_record() -> None:
    model = default_model_bytes()
    record = default_training_record()
    metadata = read_metadata(model)
    assert metadata["model_version"] == record["model_version"]
    assert metadata["features_version"] == FEATURES_VERSION == record["features_version"]
    assert metadata["output"] == OUTPUT_LOG_RATIO
    assert json.loads(metadata["training"]) == record
    assert record["val_mae_model_s"] < record["val_mae_baseline_s"]
    # Trained on seeds the evaluation (bench/eta_eval.py, seeds 1-40) never uses, and on
    # the corpus's real trips; calibrated on them, out of fold.
    assert trained_seeds(record) == set(range(1000, 1060))
    assert any(not is_simulated(name) for name in record["sources"]["days"]["days"])
    assert record["calibration_on"].startswith("out-of-fold")
    assert "calibration" in metadata
    predictor = EtaPredictor.load(model)
    if available_backend() is not None:
        assert predictor.model_version == record["model_version"]
        assert predictor.calibration is not None
    else:
        assert predictor.unavailable
