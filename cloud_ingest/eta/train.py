"""Training the ETA model with numpy alone, and writing it as the agent's .tflite file.

The model predicts the contract's output column (:mod:`firmware_agent.eta.predictor`):
the log ratio of the real time to arrival to the naive baseline's, both plus 60 s. So
it learns a correction of the baseline, one that is as good at 2 minutes as at 2 hours.
It is the average of three small ReLU MLPs (features -> 16 -> 16 -> 1 each, by default),
exported as one fully connected network of a few tens of KB.

How it is trained, and why:

- Inputs are standardized with the training rows' mean and standard deviation and
  clipped to their 1st-99th percentiles (:attr:`TrainConfig.clip_quantile`): a van on
  a day unlike the training days (a bus route, a traffic jam) gets the answer for the
  nearest thing the model has seen, not an extrapolation of ReLUs. Both are folded into
  the exported layers (:func:`_fold`), so the van feeds raw features (the contract). A
  column that never varies in training gets zero weights: the model has learnt nothing
  from it, and an unseen value on a van must not move the answer.
- Loss: Huber on the log ratio (quadratic within :attr:`TrainConfig.huber_delta`,
  linear beyond: a stop whose arrival the day's events pushed far out does not dominate),
  each row weighted by its real time to arrival plus 60 s, which makes an error in the
  log ratio cost about what it costs in seconds, the unit the evaluation counts in.
- Adam, minibatches, at most :attr:`TrainConfig.max_epochs`, and early stopping on the
  validation days' MAE in seconds (whole days held out: rows of one day are strongly
  correlated, a random row split would flatter the model); the best epoch's weights
  are kept. Each ensemble member is trained so, from its own seed; their average
  answers more steadily than any one of them on days unlike the training days.
- Everything random (initial weights, minibatch order) draws from numpy generators
  seeded from :attr:`TrainConfig.seed`, the held-out days from
  :attr:`TrainConfig.split_seed`: the same rows and config give the same weights.

:func:`train` returns the layers ready for :func:`~cloud_ingest.eta.tflite_export.export_mlp`
and the validation figures; :func:`export_model` writes the file with the contract's
metadata and the training's record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cloud_ingest.errors import ConfigError, IngestError
from cloud_ingest.eta.dataset import EtaDataset
from cloud_ingest.eta.tflite_export import Dense, export_mlp, mlp_forward
from firmware_agent.contract.eta_features import FEATURE_NAMES, FEATURES_VERSION
from firmware_agent.contract.eta_model import (
    HORIZON_EDGES_S,
    OUTPUT_LOG_RATIO,
    Calibration,
    answer,
    eta_from_log_ratio,
)

FloatArray = npt.NDArray[np.float64]

EXPORT_BATCH: Final = 256
"""Rows per invoke in the exported file: a 150-stop route is one invoke."""

# A standard deviation below this (relative to the mean's size) is a constant column.
_CONSTANT_RELATIVE_STD: Final = 1e-9
_ADAM_BETAS: Final = (0.9, 0.999)
_ADAM_EPS: Final = 1e-8


SIMULATED_PREFIX: Final = "sim-"
"""Days whose name starts so are the simulator's; every other day is real (trips, store)."""

SIMULATOR_ONLY_FEATURES: Final = (
    # What the real trips have only as the simulator invents it: GNSS quality (a trip's
    # fixes are interpolated positions, not a receiver's), traffic by hour and weekday
    # (the simulator's profile), promised windows (no real trip has one). Excluded by
    # default (zero weights). Stop types and parcels stay: a fleet's manifests carry
    # them, and the real trips (one type, one parcel per stop) cannot learn them wrong;
    # the ablation, leave-trips-out, is in docs/eta.md ("Learning from real trips").
    "tod_sin",
    "tod_cos",
    "dow_sin",
    "dow_cos",
    "late_s",
    "late_known",
    "hdop",
    "hdop_known",
    "sats",
    "fix_fraction_60s",
)
MIN_CALIBRATION_ROWS: Final = 30
"""Fewer held-out rows in a horizon bucket: no evidence, the ETA is the naive one."""
_SHRINK_GRID: Final = np.linspace(0.0, 1.0, 21)


def is_simulated(day_name: str) -> bool:
    return day_name.startswith(SIMULATED_PREFIX)


def trip_halt_s(day_name: str) -> float | None:
    """The minimum halt of a trip day's manifest from its name (``[trip-]hSECONDS-NAME``,
    :func:`simulator.eta_days.trip_day`), ``None`` for any other name."""
    head, sep, _ = day_name.removeprefix("trip-").partition("-")
    if sep and head[:1] == "h" and head[1:].replace(".", "", 1).isdigit():
        return float(head[1:])
    return None


def day_source(day_name: str) -> str:
    """The recording a day comes from: a trip's manifests of different minimum halts
    (``h60-X`` and ``X``, with or without ``trip-``) share their fixes, so they are one
    source and are held out together."""
    rest = day_name.removeprefix("trip-")
    if trip_halt_s(day_name) is not None:
        rest = rest.partition("-")[2]
    return rest


class TrainingError(IngestError, ValueError):
    """The rows cannot train a model (fewer than two days, an empty split)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Settings of :func:`train`; every field ends up in the model's metadata.
    :class:`~cloud_ingest.errors.ConfigError` for a value out of range."""

    hidden: tuple[int, ...] = (16, 16)
    max_epochs: int = 60
    patience: int = 15  # epochs without a better validation MAE before stopping
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5  # L2 on the weights (not the biases), per step
    huber_delta: float = 0.1  # in log-ratio units: ~10 % of (time to arrival + 60 s)
    # Inputs are clipped to the training rows' [q, 1 - q] quantiles (None: not clipped).
    clip_quantile: float | None = 0.01
    val_fraction: float = 0.2  # share of the days held out for early stopping
    seed: int = 0  # initial weights and minibatch order
    split_seed: int = 0  # which days are held out
    # MLPs trained from different seeds and averaged (exported as one wider MLP): an
    # ensemble answers more steadily on days unlike the training days.
    ensemble: int = 3
    # Share of the loss the real days' rows carry when both kinds are present (the
    # simulator's days would otherwise drown the few real trips).
    real_share: float = 0.5
    # Features the model must not use (zero weights): names of FEATURE_NAMES.
    exclude: tuple[str, ...] = SIMULATOR_ONLY_FEATURES
    # Calibrate shrink and interval on the held-out rows of the real trips' manifests of
    # halts of at least ``calibrate_min_halt_s`` (:func:`trip_halt_s`: a delivery stop
    # is a long halt, and the short halts in between are traffic); failing
    # ``min_calibration_rows`` of them, on every held-out real day's; failing that, on
    # every held-out row.
    calibrate_min_halt_s: float = 60.0
    min_calibration_rows: int = 200
    # Calibrate on out-of-fold predictions of the real days instead (this many folds of
    # their recordings, each a one-member training; 0: on the held-out days, no extra
    # training). Costs calibration_folds more trainings.
    calibration_folds: int = 4

    def __post_init__(self) -> None:
        unknown = sorted(set(self.exclude) - set(FEATURE_NAMES))
        if unknown:
            raise ConfigError(f"exclude names unknown features: {', '.join(unknown)}")
        if not 0.0 < self.real_share < 1.0:
            raise ConfigError("real_share must be in (0, 1)")
        if self.calibration_folds < 0 or self.calibration_folds == 1:
            raise ConfigError("calibration_folds must be 0 (off) or >= 2")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError("hidden must list at least one layer size >= 1")
        if min(self.max_epochs, self.patience, self.batch_size, self.ensemble) < 1:
            raise ConfigError("max_epochs, patience, batch_size and ensemble must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("val_fraction must be in (0, 1)")
        if self.learning_rate <= 0 or self.huber_delta <= 0 or self.weight_decay < 0:
            raise ConfigError("learning_rate and huber_delta must be > 0, weight_decay >= 0")


QUICK_CONFIG: Final = TrainConfig(max_epochs=15, ensemble=1)
"""A training for evaluations that train once per held-out fold: one member, 15 epochs
(the out-of-fold calibration included: about 30-80 s on the 141,659 rows of the 60
simulator days and 76 trip manifests, shared 2-CPU VM; bench/eta_loto.py's figures)."""


@dataclass(frozen=True, slots=True)
class ErrorStats:
    """Absolute errors of predicted arrival times, in seconds (and MAPE in percent)."""

    n: int
    mae_s: float
    mape_pct: float
    p90_s: float

    @classmethod
    def of(cls, predicted_s: FloatArray, actual_s: FloatArray) -> ErrorStats:
        """MAE, MAPE and p90 of ``|predicted - actual|``; MAPE over the actual times to
        arrival (floored at 60 s: a stop 3 s away would make any error a huge percent)."""
        if len(actual_s) == 0:
            return cls(0, math.nan, math.nan, math.nan)
        err = np.abs(np.asarray(predicted_s) - np.asarray(actual_s))
        return cls(
            len(err),
            float(err.mean()),
            float(100.0 * (err / np.maximum(actual_s, 60.0)).mean()),
            float(np.percentile(err, 90)),
        )


@dataclass(frozen=True, slots=True)
class TrainResult:
    """A trained model: ``layers`` take raw features (normalization folded in)."""

    layers: tuple[Dense, ...]
    config: TrainConfig
    train_days: tuple[str, ...]
    val_days: tuple[str, ...]
    n_train: int
    n_val: int
    epochs: int  # epochs run
    best_epoch: int
    val_model: ErrorStats
    val_baseline: ErrorStats
    train_time_s: float
    history: tuple[float, ...] = field(default=())  # validation MAE (s) per epoch
    calibration: Calibration | None = None
    calibration_rows: int = 0  # held-out rows it was fit on
    calibration_on: str = ""  # which

    @property
    def val_ratio(self) -> float:
        """Validation MAE of the model over the baseline's (below 1: better)."""
        return self.val_model.mae_s / self.val_baseline.mae_s

    def predict_s(self, x: npt.ArrayLike, naive_s: npt.ArrayLike) -> FloatArray:
        """Seconds to arrival for feature rows, as the agent computes them (float64);
        ``naive_s`` the anchor (the dataset's ``naive_s``)."""
        return answer(naive_s, mlp_forward(self.layers, x)[:, 0], self.calibration).eta_s

    def predict_interval_s(
        self, x: npt.ArrayLike, naive_s: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(eta, p10, p90) in seconds; without a calibration p10 = p90 = eta."""
        got = answer(naive_s, mlp_forward(self.layers, x)[:, 0], self.calibration)
        eta = got.eta_s
        p10 = got.p10_s if got.p10_s is not None else eta
        p90 = got.p90_s if got.p90_s is not None else eta
        return eta, p10, p90


def split_days(
    dataset: EtaDataset, val_fraction: float, seed: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training days, validation days): a seeded draw of whole days, at least one each
    (:class:`TrainingError` with fewer than two days), stratified: simulated and real
    days are each held out in that share (a kind with one day stays in training), by
    source (:func:`day_source`: a trip's manifests leave together)."""
    names = sorted({dataset.day_names[g] for g in np.unique(dataset.groups)})
    if len(names) < 2:
        raise TrainingError(f"training needs rows from at least two days, got {len(names)}")
    sources = sorted({day_source(n) for n in names})
    rng = np.random.default_rng(seed)
    held: list[str] = []
    kinds = [[n for n in sources if is_simulated(n)], [n for n in sources if not is_simulated(n)]]
    for kind in kinds:
        if len(kind) >= 2:
            order = rng.permutation(len(kind))
            n_val = min(len(kind) - 1, max(1, round(val_fraction * len(kind))))
            held += [kind[i] for i in order[:n_val]]
    if not held:
        held = [sources[int(rng.integers(len(sources)))]]
    val = tuple(n for n in names if day_source(n) in set(held))
    if len(val) == len(names):
        raise TrainingError("training needs rows from at least two recordings")
    return tuple(n for n in names if n not in set(val)), val


def source_weights(dataset: EtaDataset, real_share: float) -> FloatArray:
    """Per row, a weight that gives the real days' rows ``real_share`` of the total (1
    everywhere when the rows are all of one kind); mean 1."""
    real_day = np.array([not is_simulated(n) for n in dataset.day_names], dtype=np.bool_)
    real = real_day[dataset.groups] if len(dataset) else np.zeros(0, dtype=np.bool_)
    n_real = int(real.sum())
    n_sim = len(real) - n_real
    if n_real == 0 or n_sim == 0:
        return np.ones(len(real))
    return np.where(real, real_share / n_real, (1.0 - real_share) / n_sim) * len(real)


def fit_calibration(
    anchor_s: FloatArray,
    log_ratio: FloatArray,
    actual_s: FloatArray,
    edges_s: Sequence[float] = HORIZON_EDGES_S,
) -> Calibration:
    """Per anchor bucket, the share of the model's correction that minimises the MAE in
    seconds on these (held-out) rows, and the 10th/90th percentiles of the log ratio of
    the truth to the shrunk ETA (both + 60 s). A bucket with fewer than
    :data:`MIN_CALIBRATION_ROWS` rows keeps the naive ETA (shrink 0) and takes the
    interval of all rows."""
    probe = Calibration(tuple(edges_s), *([(0.0,) * (len(edges_s) + 1)] * 3))
    bucket = probe.bucket(anchor_s)
    shrink: list[float] = []
    residual = np.zeros(len(actual_s))
    for b in range(len(edges_s) + 1):
        rows = bucket == b
        best_w = 0.0
        if int(rows.sum()) >= MIN_CALIBRATION_ROWS:
            maes = [
                float(
                    np.abs(
                        eta_from_log_ratio(anchor_s[rows], w * log_ratio[rows]) - actual_s[rows]
                    ).mean()
                )
                for w in _SHRINK_GRID
            ]
            best_w = float(_SHRINK_GRID[int(np.argmin(maes))])
        shrink.append(best_w)
        eta = eta_from_log_ratio(anchor_s[rows], best_w * log_ratio[rows])
        residual[rows] = np.log((np.maximum(actual_s[rows], 0.0) + 60.0) / (eta + 60.0))
    limit = 2.9  # within the contract's +-3
    q10: list[float] = []
    q90: list[float] = []
    for b in range(len(edges_s) + 1):
        rows = bucket == b
        pool = residual[rows] if int(rows.sum()) >= MIN_CALIBRATION_ROWS else residual
        lo, hi = np.quantile(pool, [0.1, 0.9]) if len(pool) else (0.0, 0.0)
        q10.append(float(np.clip(min(lo, 0.0), -limit, limit)))
        q90.append(float(np.clip(max(hi, 0.0), -limit, limit)))
    return Calibration(tuple(float(e) for e in edges_s), tuple(shrink), tuple(q10), tuple(q90))


class _Mlp:
    """The MLP during training: float64 weights on standardized inputs."""

    def __init__(self, sizes: Sequence[int], rng: np.random.Generator) -> None:
        self.weights = [
            rng.normal(0.0, math.sqrt(2.0 / n_in), (n_out, n_in))
            for n_in, n_out in itertools.pairwise(sizes)
        ]
        self.biases = [np.zeros(n_out) for n_out in sizes[1:]]

    @property
    def params(self) -> list[FloatArray]:
        return [*self.weights, *self.biases]

    def forward(self, x: FloatArray) -> tuple[FloatArray, list[FloatArray]]:
        """The output column and every layer's input (for the backward pass)."""
        inputs = []
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            inputs.append(h)
            h = h @ w.T + b
            if i < last:
                h = np.maximum(h, 0.0)
        return h[:, 0], inputs

    def backward(self, grad_out: FloatArray, inputs: list[FloatArray]) -> list[FloatArray]:
        """Gradients of the loss, in :attr:`params` order, from d loss / d output."""
        g = grad_out[:, None]
        grads_w: list[FloatArray] = []
        grads_b: list[FloatArray] = []
        for i in range(len(self.weights) - 1, -1, -1):
            grads_w.append(g.T @ inputs[i])
            grads_b.append(g.sum(axis=0))
            if i > 0:
                # ReLU: the layer's input is the previous layer's output after ReLU.
                g = (g @ self.weights[i]) * (inputs[i] > 0.0)
        return [*reversed(grads_w), *reversed(grads_b)]


class _Adam:
    """Adam (Kingma & Ba, 2015) updating ``params`` in place."""

    def __init__(self, params: list[FloatArray], learning_rate: float) -> None:
        self.params = params
        self.learning_rate = learning_rate
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: Sequence[FloatArray]) -> None:
        beta1, beta2 = _ADAM_BETAS
        self.t += 1
        for i, g in enumerate(grads):
            self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * g
            self.v[i] = beta2 * self.v[i] + (1.0 - beta2) * g * g
            m_hat = self.m[i] / (1.0 - beta1**self.t)
            v_hat = self.v[i] / (1.0 - beta2**self.t)
            # In place: the MLP holds the same arrays.
            self.params[i] -= self.learning_rate * m_hat / (np.sqrt(v_hat) + _ADAM_EPS)


@dataclass(frozen=True, slots=True)
class _Inputs:
    """How raw features become the MLP's inputs: ``clip((x - mean) / scale, lo, hi)``,
    zero for columns that never varied in training."""

    mean: FloatArray
    scale: FloatArray
    varies: npt.NDArray[np.bool_]
    lo: FloatArray | None  # standardized clip bounds, or None
    hi: FloatArray | None

    @classmethod
    def fit(cls, x: FloatArray, clip_quantile: float | None) -> _Inputs:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        varies = std > _CONSTANT_RELATIVE_STD * np.maximum(1.0, np.abs(mean))
        scale = np.where(varies, std, 1.0)
        if clip_quantile is None:
            return cls(mean, scale, varies, None, None)
        z = (x - mean) / scale
        lo = np.quantile(z, clip_quantile, axis=0)
        hi = np.quantile(z, 1.0 - clip_quantile, axis=0)
        return cls(mean, scale, varies, lo, np.maximum(hi, lo))

    def __call__(self, x: npt.ArrayLike) -> FloatArray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        if self.lo is not None and self.hi is not None:
            z = np.clip(z, self.lo, self.hi)
        return np.where(self.varies, z, 0.0)


def train(
    dataset: EtaDataset,
    config: TrainConfig | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on ``dataset`` (module doc): deterministic for a config and dataset.

    ``log``, if given, is called with one line per epoch. Raises :class:`TrainingError`
    for fewer than two days or an empty training or validation split.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    train_days, val_days = split_days(dataset, config.val_fraction, config.split_seed)
    tr, va = dataset.days(train_days), dataset.days(val_days)
    if len(tr) == 0 or len(va) == 0:
        raise TrainingError("the training or validation days have no rows")

    x_tr = tr.x.astype(np.float64)
    prepare = _Inputs.fit(x_tr, config.clip_quantile)
    used = np.array([name not in config.exclude for name in FEATURE_NAMES], dtype=np.bool_)
    prepare = dataclasses.replace(prepare, varies=prepare.varies & used)
    varies = prepare.varies
    z_tr = prepare(x_tr)
    z_va = prepare(va.x)

    members: list[_Fit] = []
    for k, member_seed in enumerate(np.random.SeedSequence(config.seed).spawn(config.ensemble)):
        member_log = log
        if log is not None and config.ensemble > 1:
            member_log = _prefixed(log, f"member {k + 1}/{config.ensemble}: ")
        rng = np.random.default_rng(member_seed)
        members.append(
            _fit_member(z_tr, tr, z_va, va, varies=varies, config=config, rng=rng, log=member_log)
        )
    mlp = _average(m.mlp for m in members)
    layers = _fold(mlp, prepare)
    out_va = mlp_forward(layers, va.x)[:, 0]
    oof = _out_of_fold(dataset, config) if config.calibration_folds > 1 else None
    if oof is not None:
        held, out_held = oof
        cal, cal_on = _calibration_rows(held, config)
        cal_on = f"out-of-fold ({config.calibration_folds} folds of real trips): {cal_on}"
        calibration = fit_calibration(held.naive_s[cal], out_held[cal], held.actual_s[cal])
        # Horizons the real trips do not reach (beyond an hour, say): the held-out
        # validation days (simulated ones included) are the only evidence there.
        counts = np.bincount(
            calibration.bucket(held.naive_s[cal]), minlength=len(calibration.shrink)
        )
        sparse = counts < MIN_CALIBRATION_ROWS
        if sparse.any():
            fallback = fit_calibration(va.naive_s, out_va, va.actual_s)
            calibration = _merge(calibration, fallback, sparse)
            cal_on += "; buckets without them: held-out days"
    else:
        cal, cal_on = _calibration_rows(va, config)
        calibration = fit_calibration(va.naive_s[cal], out_va[cal], va.actual_s[cal])
    predicted = answer(va.naive_s, out_va, calibration).eta_s
    return TrainResult(
        layers=layers,
        config=config,
        train_days=train_days,
        val_days=val_days,
        n_train=len(tr),
        n_val=len(va),
        epochs=max(m.epochs for m in members),
        best_epoch=max(m.best_epoch for m in members),
        val_model=ErrorStats.of(predicted, va.actual_s),
        val_baseline=ErrorStats.of(va.naive_s, va.actual_s),
        train_time_s=time.perf_counter() - started,
        history=tuple(members[0].history),
        calibration=calibration,
        calibration_rows=int(cal.sum()),
        calibration_on=cal_on,
    )


def _merge(a: Calibration, b: Calibration, use_b: npt.NDArray[np.bool_]) -> Calibration:
    """``a``, with ``b``'s values in the buckets ``use_b`` (same edges)."""

    def pick(x: tuple[float, ...], y: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(yv if flag else xv for xv, yv, flag in zip(x, y, use_b, strict=True))

    return Calibration(a.edges_s, pick(a.shrink, b.shrink), pick(a.q10, b.q10), pick(a.q90, b.q90))


def _out_of_fold(dataset: EtaDataset, config: TrainConfig) -> tuple[EtaDataset, FloatArray] | None:
    """The real days' rows, each predicted by a model trained without its recording
    (``calibration_folds`` folds of the real recordings, seeded by ``split_seed``; each
    fold one ensemble member, otherwise ``config``), and those predictions (the output
    column); ``None`` with fewer real recordings than folds."""
    real_day = np.array([not is_simulated(n) for n in dataset.day_names], dtype=np.bool_)
    sources = sorted({day_source(n) for n, r in zip(dataset.day_names, real_day, strict=True) if r})
    if len(sources) < config.calibration_folds:
        return None
    order = np.random.default_rng(config.split_seed).permutation(len(sources))
    fold_of = {sources[i]: k % config.calibration_folds for k, i in enumerate(order)}
    day_fold = np.array(
        [
            fold_of[day_source(n)] if r else -1
            for n, r in zip(dataset.day_names, real_day, strict=True)
        ]
    )
    row_fold = day_fold[dataset.groups]
    out = np.zeros(len(dataset))
    inner = dataclasses.replace(config, calibration_folds=0, ensemble=1)
    for k in range(config.calibration_folds):
        held = row_fold == k
        result = train(dataset.select(~held), inner)
        out[held] = mlp_forward(result.layers, dataset.x[held])[:, 0]
    real_rows = row_fold >= 0
    return dataset.select(real_rows), out[real_rows]


def _calibration_rows(va: EtaDataset, config: TrainConfig) -> tuple[npt.NDArray[np.bool_], str]:
    """The held-out rows the calibration is fit on, and what they are (config doc)."""
    names = va.day_names
    halts = [trip_halt_s(n) for n in names]
    preferred = np.array(
        [h is not None and h >= config.calibrate_min_halt_s for h in halts], dtype=np.bool_
    )
    real = np.array([not is_simulated(n) for n in names], dtype=np.bool_)
    long_halts = f"held-out real trips of halts >= {config.calibrate_min_halt_s:g} s"
    for days, what in ((preferred, long_halts), (real, "held-out real days")):
        rows = days[va.groups] if len(va) else np.zeros(0, dtype=np.bool_)
        if int(rows.sum()) >= config.min_calibration_rows:
            return rows, what
    return np.ones(len(va), dtype=np.bool_), "held-out days"


@dataclass(frozen=True, slots=True)
class _Fit:
    mlp: _Mlp
    epochs: int
    best_epoch: int
    history: tuple[float, ...]


def _prefixed(log: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda line: log(prefix + line)


def _fit_member(
    z_tr: FloatArray,
    tr: EtaDataset,
    z_va: FloatArray,
    va: EtaDataset,
    *,
    varies: npt.NDArray[np.bool_],
    config: TrainConfig,
    rng: np.random.Generator,
    log: Callable[[str], None] | None,
) -> _Fit:
    """One MLP trained with Adam and early stopping (module doc); the best epoch's."""
    y_tr = tr.y_target
    weight_tr = (tr.actual_s + 60.0) / (tr.actual_s + 60.0).mean()
    weight_tr = weight_tr * source_weights(tr, config.real_share)
    weight_va = source_weights(va, config.real_share)
    mlp = _Mlp([z_tr.shape[1], *config.hidden, 1], rng)
    mlp.weights[0] *= varies  # constant columns carry nothing: no weight, ever
    # Start near "the baseline times the typical correction": a full-size random last
    # layer would start minutes off, and a small data set may never climb back.
    mlp.weights[-1] *= 0.1
    mlp.biases[-1][:] = float(np.median(y_tr))
    params = mlp.params
    adam = _Adam(params, config.learning_rate)
    decayed = len(mlp.weights)  # weight decay on the weights, not the biases

    def val_mae() -> float:
        out, _ = mlp.forward(z_va)
        error = np.abs(eta_from_log_ratio(va.naive_s, out) - va.actual_s)
        return float((error * weight_va).mean())

    best = val_mae()
    best_params = [p.copy() for p in params]
    best_epoch = 0
    history: list[float] = []
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        order = rng.permutation(len(z_tr))
        for lo in range(0, len(order), config.batch_size):
            rows = order[lo : lo + config.batch_size]
            out, inputs = mlp.forward(z_tr[rows])
            residual = out - y_tr[rows]
            # Huber's derivative, weighted; the mean over the batch.
            grad = np.clip(residual, -config.huber_delta, config.huber_delta)
            grad *= weight_tr[rows] / len(rows)
            grads = mlp.backward(grad, inputs)
            for i in range(decayed):
                grads[i] = grads[i] + config.weight_decay * params[i]
            adam.step(grads)
            mlp.weights[0] *= varies
        mae = val_mae()
        history.append(mae)
        if log is not None:
            log(f"epoch {epoch:3d}: validation MAE {mae:7.1f} s (best {min(best, mae):7.1f} s)")
        if mae < best:
            best, best_epoch = mae, epoch
            best_params = [p.copy() for p in params]
        elif epoch - best_epoch >= config.patience:
            break
    for p, kept in zip(params, best_params, strict=True):
        p[...] = kept
    return _Fit(mlp, epoch, best_epoch, tuple(history))


def _average(mlps: Iterable[_Mlp]) -> _Mlp:
    """One MLP whose output is the mean of ``mlps``' (all of the same shape): their
    hidden layers side by side (block-diagonal), the last layer averaging."""
    mlps = list(mlps)
    if len(mlps) == 1:
        return mlps[0]
    n = len(mlps)
    out = _Mlp.__new__(_Mlp)
    depth = len(mlps[0].weights)
    out.weights, out.biases = [], []
    for i in range(depth):
        ws = [m.weights[i] for m in mlps]
        bs = [m.biases[i] for m in mlps]
        if i == 0:
            w = np.vstack(ws)
        elif i == depth - 1:
            w = np.hstack(ws) / n
        else:
            w = np.zeros((sum(x.shape[0] for x in ws), sum(x.shape[1] for x in ws)))
            r = c = 0
            for x in ws:
                w[r : r + x.shape[0], c : c + x.shape[1]] = x
                r, c = r + x.shape[0], c + x.shape[1]
        out.weights.append(w)
        out.biases.append(np.mean(bs, axis=0) if i == depth - 1 else np.concatenate(bs))
    return out


def _fold(mlp: _Mlp, inputs: _Inputs) -> tuple[Dense, ...]:
    """The MLP on raw features, in fully connected layers only.

    Standardizing: ``W (x - mean) / scale + b`` is ``(W / scale) x + b'``. Clipping
    ``z`` to ``[lo, hi]`` is ``lo + relu(z - lo) - relu(z - hi)``: one more ReLU layer
    (two units per varying column), whose linear recombination folds into the first
    layer's weights ``[W, -W]`` and bias ``b + W lo``.
    """
    w_z = mlp.weights[0] * inputs.varies  # on standardized inputs
    rest = list(zip(mlp.weights[1:], mlp.biases[1:], strict=True))
    layers: list[tuple[FloatArray, FloatArray]] = []
    if inputs.lo is None or inputs.hi is None:
        w0 = w_z / inputs.scale
        layers.append((w0, mlp.biases[0] - w0 @ inputs.mean))
    else:
        cols = np.flatnonzero(inputs.varies)
        n_in = len(inputs.mean)
        standardize = np.zeros((len(cols), n_in))
        standardize[np.arange(len(cols)), cols] = 1.0 / inputs.scale[cols]
        offset = -inputs.mean[cols] / inputs.scale[cols]
        lo, hi = inputs.lo[cols], inputs.hi[cols]
        clip_w = np.vstack([standardize, standardize])
        clip_b = np.concatenate([offset - lo, offset - hi])
        w = w_z[:, cols]
        layers.append((clip_w, clip_b))
        layers.append((np.hstack([w, -w]), mlp.biases[0] + w @ lo))
    layers.extend(rest)
    last = len(layers) - 1
    return tuple(
        Dense(w.astype(np.float32), b.astype(np.float32), "relu" if i < last else "none")
        for i, (w, b) in enumerate(layers)
    )


def weights_digest(layers: Sequence[Dense]) -> str:
    """SHA-256 (hex) of the layers' float32 weights and biases, in order."""
    h = hashlib.sha256()
    for layer in layers:
        h.update(layer.weights.astype("<f4").tobytes())
        h.update(layer.bias.astype("<f4").tobytes())
    return h.hexdigest()


def default_model_version(layers: Sequence[Dense], trained_at: datetime) -> str:
    """``eta-YYYYMMDD-<first 10 hex of the weights' SHA-256>``: the date says when, the
    hash tells two models of one day apart and is the same for the same weights."""
    return f"eta-{trained_at.astimezone(UTC):%Y%m%d}-{weights_digest(layers)[:10]}"


def training_record(
    result: TrainResult,
    *,
    model_version: str,
    trained_at: datetime,
    sources: Mapping[str, Any],
    command: str | None = None,
) -> dict[str, Any]:
    """What the model file (metadata ``training``) and ``default.json`` say about how
    it was made: sources (seeds, store), sizes, settings, validation figures, date."""
    return {
        "model_version": model_version,
        "features_version": FEATURES_VERSION,
        "output": OUTPUT_LOG_RATIO,
        "trained_at": trained_at.astimezone(UTC).isoformat(timespec="seconds"),
        "command": command,
        "sources": dict(sources),
        "architecture": [len(FEATURE_NAMES), *result.config.hidden, 1],
        "exported_layers": [[layer.n_in, layer.n_out] for layer in result.layers],
        "config": asdict(result.config),
        "weights_sha256": weights_digest(result.layers),
        "n_train_rows": result.n_train,
        "n_val_rows": result.n_val,
        "train_days": list(result.train_days),
        "val_days": list(result.val_days),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "train_time_s": round(result.train_time_s, 1),
        "val_mae_model_s": round(result.val_model.mae_s, 1),
        "val_mae_baseline_s": round(result.val_baseline.mae_s, 1),
        "val_mae_ratio": round(result.val_ratio, 3),
        "val_p90_model_s": round(result.val_model.p90_s, 1),
        "val_p90_baseline_s": round(result.val_baseline.p90_s, 1),
        "calibration": None
        if result.calibration is None
        else json.loads(result.calibration.to_json()),
        "calibration_rows": result.calibration_rows,
        "calibration_on": result.calibration_on,
    }


def export_model(result: TrainResult, record: Mapping[str, Any]) -> bytes:
    """The .tflite file of ``result`` (batch :data:`EXPORT_BATCH`) with the contract's
    metadata (``features_version``, ``model_version``, ``output``), the feature names,
    and ``training``: ``record`` as JSON."""
    metadata = {
        "features_version": FEATURES_VERSION,
        "model_version": str(record["model_version"]),
        "output": OUTPUT_LOG_RATIO,
        "features": json.dumps(list(FEATURE_NAMES)),
        "training": json.dumps(record, sort_keys=True),
    }
    if result.calibration is not None:
        metadata["calibration"] = result.calibration.to_json()
    return export_mlp(result.layers, batch=EXPORT_BATCH, metadata=metadata)
