"""Refining campaigns: many pot cycles where the twin plays the plant.

A campaign is a list of scenarios — parameter spread around a config, scrap grades,
setpoint policies — each run for one whole refining cycle (to its breakthrough end)
under a controller. Scenarios are cut into fixed batches; each batch is one vectorised
kernel run over its pots. Batches run in a local process pool by default, or on a Dask
distributed cluster when a scheduler address (or client) is given. Every pot's
parameters and random stream are a pure function of (seed, scenario id), and pots do
not interact, so the results are identical wherever a batch runs.

Also here: ``record_cycle``, a single cycle logged the way a prototype pot's PLC would
log it — the recorded data sets shadow mode replays.

The controller is passed in (``policy_factory`` + per-scenario policy parameters) so
this module depends only on the twin.

Profile (2-core machine, 3 kA config, dt = control period = 600 s, 250-pot batch of the
4 grades × 4 policies mix; the clean-scrap pots run to the 90-day timer, so a batch
takes 12,960 control periods): 1.26 s per batch — kernel ≈ 0.8 s (≈ 500 ns per
pot-step, 1.6 M pot-steps), vectorised policy ≈ 0.34 s (26 µs per scan for all 250
pots), wrappers ≈ 0.1 s. Before vectorising the policy without ``nan_to_num``/``clip``
and reusing the readings views the policy alone took 1.8 s per 125-pot batch. 1,000
cycles: ≈ 5 s of CPU, ≈ 4–9 s wall on 2 workers (process pool or Dask LocalCluster,
including worker start-up) depending on what else the machine runs. Bigger batches
amortise the per-scan Python cost; batch size never changes a result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from refining import model as rf
from refining.config import RefiningConfig, scaled_params
from refining.recording import write_table

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

#: parameter factors drawn per scenario (log-normal, relative std = spread × weight)
SPREAD_FACTORS: dict[str, float] = {
    "kappa": 1.0,
    "r_contact": 1.0,
    "ua": 1.0,
    "beta_fe": 1.0,
    "beta_si": 1.0,
    "sludge_k": 1.0,
    "xsat_fe": 0.5,
    "ce_loss": 1.0,
    "anode_mass": 0.5,
}

RESULT_KEYS = (
    "days",
    "purity_avg_pct",
    "purity_min_pct",
    "dc_kwh_per_kg",
    "total_kwh_per_kg",
    "kg_per_day",
    "production_kg",
    "u_avg_v",
    "ce_avg",
    "i_avg_a",
    "t_low_c",
    "t_high_c",
    "scrap_kg",
    "n_taps",
    "sludge_kg",
    "anode_fe_pct",
    "anode_cu_pct",
    "anode_si_pct",
    "cathode_fe_pct",
    "cathode_cu_pct",
    "cathode_si_pct",
)


# --------------------------------------------------------------------------- recording


def record_cycle(
    cfg: RefiningConfig,
    policy: rf.PotPolicy,
    *,
    factors: dict[str, float] | None = None,
    grade: str | None = None,
    seed: int | None = None,
    dt_s: float | None = None,
    control_period_s: float | None = None,
) -> dict[str, np.ndarray]:
    """One cycle of a pot logged like its PLC would log it (shadow-mode input format).

    Args:
        cfg: the pot's config.
        policy: the controller that ran the pot (one pot; ``step(readings, now)``).
        factors: hidden parameter multipliers of this pot (``scaled_params`` names) —
            the "real" pot differs from the config by these.
        grade: scrap grade actually charged (default: the config's).
        seed: noise seed (default: the config's).
        dt_s, control_period_s: integration step and scan period [s].

    Returns:
        columns ``t_s, current_a, voltage_v, temperature_c, heater_kw, current_sp_a,
        heater_sp_c, charge_kg, tap_kg, assay_fe_pct, assay_cu_pct, assay_si_pct``
        (see ``refining.shadow.COLUMN_UNITS``), plus ``end_reason`` on the last row.
    """
    p = cfg.params(grade)
    if factors:
        p = scaled_params(p, **factors)
    pots = rf.RefiningPots(
        p[None, :],
        cfg.initial_state()[None, :],
        rf.seed_streams(cfg.noise.seed if seed is None else seed, 1),
        dt_s=cfg.operation.dt_s if dt_s is None else dt_s,
    )
    period = cfg.operation.control_period_s if control_period_s is None else control_period_s
    rec = rf.run_closed_loop(pots, policy, period, record=True)
    r = rec.readings[0]
    u = rec.inputs[0]
    m = r.shape[0]
    tap = np.zeros(m)
    tap[:-1] = r[1:, rf.R_TAP_KG]
    assay = np.full((m, rf.N_EL), np.nan)
    has = tap > 0
    assay[:-1][has[:-1]] = r[1:, rf.R_ASSAY : rf.R_ASSAY + rf.N_EL][has[:-1]]
    end = np.zeros(m)
    end[-1] = r[-1, rf.R_END_REASON]
    return {
        "t_s": r[:, rf.R_T_S],
        "current_a": r[:, rf.R_I_A],
        "voltage_v": r[:, rf.R_U_V],
        "temperature_c": r[:, rf.R_T_C],
        "heater_kw": r[:, rf.R_Q_AUX_KW],
        "current_sp_a": u[:, 0],
        "heater_sp_c": u[:, 1],
        "charge_kg": u[:, 2],
        "tap_kg": tap,
        "assay_fe_pct": assay[:, rf.FE] * 100.0,
        "assay_cu_pct": assay[:, rf.CU] * 100.0,
        "assay_si_pct": assay[:, rf.SI] * 100.0,
        "end_reason": end,
    }


def degrade_recording(
    cols: dict[str, np.ndarray],
    *,
    gap: tuple[float, float] | None = None,
    blanks: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A recording as a historian delivers it: an outage and blank cells.

    Args:
        cols: ``record_cycle`` columns.
        gap: (start day, length in days) of an outage: the rows inside it are removed
            (with the charges, taps and assays logged there).
        blanks: number of cells blanked (NaN) in each of current, voltage, temperature
            and heater power, at random rows (seeded).
        seed: seed of the blank positions.

    Returns:
        new columns (the input is not changed).
    """
    out = {k: np.array(v, dtype=float, copy=True) for k, v in cols.items()}
    if gap is not None:
        t = out["t_s"]
        a, b = gap[0] * 86400.0, (gap[0] + gap[1]) * 86400.0
        keep = ~((t > a) & (t < b))
        out = {k: v[keep] for k, v in out.items()}
    if blanks > 0:
        rng = np.random.default_rng([int(seed), 0xB1A4])
        m = out["t_s"].shape[0]
        for name in ("current_a", "voltage_v", "temperature_c", "heater_kw"):
            idx = rng.choice(np.arange(1, m - 1), size=min(blanks, m - 2), replace=False)
            out[name][idx] = np.nan
    return out


# --------------------------------------------------------------------------- campaigns


@dataclass(frozen=True)
class CampaignSpec:
    """What to run.

    Attributes:
        n_cycles: number of scenarios (one refining cycle each).
        policies: setpoint policies to cycle through (e.g. ``refining.controller.PolicyParams``).
        grades: scrap grades to cycle through (names in the config; empty: all).
        spread: relative std of the log-normal parameter factors (0: none).
        seed: campaign seed (parameters and noise of scenario i depend only on it and i).
        dt_s: integration step (600 s is the CI fast path).
        control_period_s: controller scan period [s].
        batch_size: scenarios per task (fixed, so batching never changes a result).
    """

    n_cycles: int
    policies: tuple = ()
    grades: tuple[str, ...] = ()
    spread: float = 0.05
    seed: int = 1
    dt_s: float = 600.0
    control_period_s: float = 600.0
    batch_size: int = 250

    def __post_init__(self) -> None:
        if self.n_cycles < 1:
            raise ValueError(f"n_cycles must be ≥ 1, got {self.n_cycles}")
        if not self.policies:
            raise ValueError("at least one policy is needed")
        if not 0.0 <= self.spread <= 0.5:
            raise ValueError(f"spread must be in 0…0.5, got {self.spread}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.dt_s <= 0 or self.control_period_s < self.dt_s:
            raise ValueError(f"need 0 < dt_s ≤ control_period_s, got {self.dt_s}, {self.control_period_s}")


@dataclass
class Batch:
    """One task: a slice of scenarios with everything needed to run it anywhere."""

    ids: np.ndarray
    params: np.ndarray
    states: np.ndarray
    seed: int
    policy_factory: Callable[..., Any]
    policy_params: list
    dt_s: float
    control_period_s: float
    meta: dict[str, list] = field(default_factory=dict)


def make_scenarios(cfg: RefiningConfig, spec: CampaignSpec) -> tuple[dict[str, list], np.ndarray, np.ndarray, list]:
    """Scenario table: (meta columns, params ``[N, N_PARAM]``, states ``[N, N_STATE]``, policies).

    Scenario i uses grade ``grades[i % G]``, policy ``policies[(i // G) % P]`` and factors
    drawn from ``numpy.random.default_rng([seed, i])``.
    """
    grades = list(spec.grades) or list(cfg.scrap.grades)
    for g in grades:
        cfg.grade(g)  # raises on an unknown grade
    n = spec.n_cycles
    base = {g: cfg.params(g) for g in grades}
    s0 = cfg.initial_state()
    params = np.empty((n, rf.N_PARAM))
    states = np.empty((n, rf.N_STATE))
    meta: dict[str, list] = {"scenario": [], "grade": [], "policy": []}
    for name in SPREAD_FACTORS:
        meta[f"f_{name}"] = []
    pols = []
    for i in range(n):
        g = grades[i % len(grades)]
        pol = spec.policies[(i // len(grades)) % len(spec.policies)]
        rng = np.random.default_rng([int(spec.seed), i])
        z = rng.standard_normal(len(SPREAD_FACTORS))
        f = {k: float(math.exp(spec.spread * w * z[j])) for j, (k, w) in enumerate(SPREAD_FACTORS.items())}
        am = f.pop("anode_mass")
        params[i] = scaled_params(base[g], **f)
        st = s0.copy()
        st[rf.S_M_A_AL] *= am
        st[rf.S_M_A : rf.S_M_A + rf.N_EL] *= am
        states[i] = st
        f["anode_mass"] = am
        meta["scenario"].append(i)
        meta["grade"].append(g)
        meta["policy"].append(getattr(pol, "name", str(pol)))
        for k in SPREAD_FACTORS:
            meta[f"f_{k}"].append(f[k])
        pols.append(pol)
    return meta, params, states, pols


def make_batches(cfg: RefiningConfig, spec: CampaignSpec, policy_factory: Callable[..., Any]) -> list[Batch]:
    """Cut the scenarios into fixed batches of ``spec.batch_size``."""
    meta, params, states, pols = make_scenarios(cfg, spec)
    out = []
    for a in range(0, spec.n_cycles, spec.batch_size):
        b = slice(a, min(a + spec.batch_size, spec.n_cycles))
        out.append(
            Batch(
                ids=np.arange(b.start, b.stop),
                params=params[b].copy(),
                states=states[b].copy(),
                seed=spec.seed,
                policy_factory=policy_factory,
                policy_params=pols[b],
                dt_s=spec.dt_s,
                control_period_s=spec.control_period_s,
                meta={k: v[b] for k, v in meta.items()},
            )
        )
    return out


def run_batch(batch: Batch) -> dict[str, list]:
    """Run one batch to the end of every cycle; result columns (plain lists)."""
    pots = rf.RefiningPots(batch.params, batch.states, rf.seed_streams(batch.seed, batch.ids), dt_s=batch.dt_s)
    policy = batch.policy_factory(batch.policy_params, len(batch.ids), batch.control_period_s)
    rf.run_closed_loop(pots, policy, batch.control_period_s)
    summ = pots.summary()
    cols: dict[str, list] = {k: list(v) for k, v in batch.meta.items()}
    cols["end_reason"] = [rf.END_REASONS[int(r)] for r in summ["end_reason"]]
    cols["breakthrough_end"] = [int(r) in rf.BREAKTHROUGH_REASONS for r in summ["end_reason"]]
    trips = [trip_cause(int(r), pots.params[k], summ, k) for k, r in enumerate(summ["end_reason"])]
    cols["trip"] = [t != "" for t in trips]
    cols["trip_cause"] = trips
    for k in RESULT_KEYS:
        cols[k] = [float(x) for x in summ[k]]
    return cols


#: end reasons that are a trip: the pot stopped on a process limit before its refining cycle ended
#: (a cycle that reaches the timer without breakthrough is not a trip; its end_reason says "timer")
TRIP_REASONS = frozenset({rf.END_THERMAL, rf.END_DENSITY})


def trip_cause(reason: int, params: np.ndarray, summ: dict[str, np.ndarray], k: int) -> str:
    """Why cycle ``k`` tripped ("" when it ended normally: breakthrough, saturation or a stop).

    ``over-temperature`` / ``under-temperature`` (with the temperature reached and the
    pot's limit) or ``anode density`` (the anode alloy no longer sinks below the
    electrolyte).
    """
    if reason not in TRIP_REASONS:
        return ""
    if reason == rf.END_THERMAL:
        hi, lo = float(summ["t_high_c"][k]), float(summ["t_low_c"][k])
        if hi >= params[rf.P_T_MAX_C]:
            return f"over-temperature: {hi:.1f} °C ≥ {params[rf.P_T_MAX_C]:g} °C"
        return f"under-temperature: {lo:.1f} °C ≤ {params[rf.P_T_MIN_C]:g} °C"
    return "anode density: the anode alloy no longer denser than the electrolyte"


def _policy_factory_default(params_list, n, period_s):  # pragma: no cover - replaced by callers
    raise RuntimeError("pass a policy_factory (e.g. refining.controller.RefiningPolicy)")


def run_campaign(
    cfg: RefiningConfig,
    spec: CampaignSpec,
    policy_factory: Callable[..., Any],
    *,
    scheduler: str | Any | None = None,
    workers: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    config_path: str | Path | None = None,
):
    """Run a campaign; returns a pandas DataFrame, one row per cycle, sorted by scenario.

    Each row carries ``config_sha256``, ``campaign_seed`` and ``code_version``; the whole
    provenance (``provenance()``: also the scheduler, the spec, library versions) is in
    ``df.attrs["provenance"]``, in the Parquet file's schema metadata
    (``read_provenance``) and in ``<out>.provenance.json``. Trips (``trip``,
    ``trip_cause``): cycles that ended on temperature, anode density or the timer.

    Args:
        cfg: base pot config.
        spec: the scenarios.
        policy_factory: ``f(policy_params_list, n_pots, period_s) -> policy`` (e.g.
            ``refining.controller.RefiningPolicy``); must be importable by the workers.
        scheduler: Dask scheduler address (``tcp://host:8786``) or a
            ``distributed.Client``; None runs locally.
        workers: local worker processes (default: CPU count; 1 runs in-process).
        progress: show a rich progress bar.
        out: write the results as Parquet (or CSV) here.
        config_path: the config file (its name and bytes hash go into the provenance).
    """
    import pandas as pd

    batches = make_batches(cfg, spec, policy_factory)
    results: list[dict[str, list]] = []
    bar = _Progress(spec.n_cycles, enabled=progress, where=_where(scheduler, workers))
    with bar:
        if scheduler is not None:
            results = _run_dask(batches, scheduler, bar)
        else:
            n_workers = workers or os.cpu_count() or 1
            if n_workers <= 1 or len(batches) == 1:
                for b in batches:
                    results.append(run_batch(b))
                    bar.advance(len(b.ids))
            else:
                results = _run_pool(batches, min(n_workers, len(batches)), bar)
    frames = [pd.DataFrame(r) for r in results]
    df = pd.concat(frames, ignore_index=True).sort_values("scenario", kind="stable").reset_index(drop=True)
    prov = provenance(cfg, spec, scheduler, workers, config_path=config_path)
    # per row what is the same wherever a batch ran (concatenated campaigns stay traceable)
    df["config_sha256"] = prov["config_sha256"]
    df["campaign_seed"] = spec.seed
    df["code_version"] = prov["code_version"]
    df.attrs["provenance"] = prov
    if out is not None:
        write_results(df, out, prov)
    return df


def _code_version() -> tuple[str, dict[str, Any]]:
    """(one-line code version, details): package version, and the git commit of a checkout
    (``+dirty`` with uncommitted changes)."""
    import subprocess
    from importlib import metadata

    try:
        version = metadata.version("potline-twin")
    except metadata.PackageNotFoundError:
        version = "unknown"
    info: dict[str, Any] = {"package": version}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""  # fmt: skip
        info.update(git_commit=commit, git_dirty=dirty)
        return f"{version}+g{commit[:12]}{'.dirty' if dirty else ''}", info
    except (OSError, subprocess.SubprocessError):
        return version, info


def config_sha256(cfg: RefiningConfig) -> str:
    """SHA-256 of the validated config (canonical JSON): equal for files that differ only in
    comments, layout or defaults written out."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def provenance(
    cfg: RefiningConfig,
    spec: CampaignSpec,
    scheduler: str | Any | None,
    workers: int | None,
    *,
    config_path: str | Path | None = None,
) -> dict[str, Any]:
    """What produced a campaign's results: config (hash, file, its own hash), seed and the whole
    spec, code version (package, git commit), scheduler, library versions, time (UTC)."""
    import hashlib
    import platform
    from datetime import UTC, datetime
    from importlib import metadata

    code, code_info = _code_version()
    libs: dict[str, str | None] = {}
    for dist in ("numpy", "numba", "pandas", "pyarrow", "dask", "distributed"):
        try:
            libs[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            libs[dist] = None
    prov: dict[str, Any] = {
        "config_sha256": config_sha256(cfg),
        "config_name": cfg.pot.name,
        "config_file": str(config_path) if config_path is not None else None,
        "config_file_sha256": hashlib.sha256(Path(config_path).read_bytes()).hexdigest()
        if config_path is not None and Path(config_path).is_file()
        else None,
        "seed": spec.seed,
        "spec": {
            "n_cycles": spec.n_cycles,
            "policies": [getattr(p, "name", str(p)) for p in spec.policies],
            "grades": list(spec.grades),
            "spread": spec.spread,
            "dt_s": spec.dt_s,
            "control_period_s": spec.control_period_s,
            "batch_size": spec.batch_size,
        },
        "code_version": code,
        "code": code_info,
        "scheduler": _where(scheduler, workers),
        "python": platform.python_version(),
        "libraries": libs,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return prov


#: Parquet schema metadata key of a campaign's provenance (JSON)
PROVENANCE_KEY = b"potline.provenance"


def write_results(df: Any, out: str | Path, prov: dict[str, Any]) -> Path:
    """Results as Parquet (provenance in the schema metadata) or CSV, plus ``<out>.provenance.json``."""
    import json

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[PROVENANCE_KEY] = json.dumps(prov, sort_keys=True).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
    else:
        write_table(df, path)
    path.with_name(path.name + ".provenance.json").write_text(json.dumps(prov, indent=1, sort_keys=True) + "\n")
    return path


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance a campaign's Parquet file carries (``{}`` when none)."""
    import json

    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def _where(scheduler: str | Any | None, workers: int | None) -> str:
    if scheduler is None:
        return f"local x{workers or os.cpu_count() or 1}"
    return f"dask {scheduler if isinstance(scheduler, str) else 'client'}"


def _run_pool(batches: Sequence[Batch], n_workers: int, bar: _Progress) -> list[dict[str, list]]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    out = []
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as ex:
        futs = {ex.submit(run_batch, b): len(b.ids) for b in batches}
        for f in as_completed(futs):
            out.append(f.result())
            bar.advance(futs[f])
    return out


def _run_dask(batches: Sequence[Batch], scheduler: str | Any, bar: _Progress) -> list[dict[str, list]]:
    from distributed import Client, as_completed

    own = isinstance(scheduler, str)
    client = Client(scheduler) if isinstance(scheduler, str) else scheduler
    try:
        futs = client.map(run_batch, list(batches), pure=False)
        sizes = {f.key: len(b.ids) for f, b in zip(futs, batches, strict=False)}
        out = []
        for f in as_completed(futs):
            out.append(f.result())
            bar.advance(sizes[f.key])
            f.release()
        return out
    finally:
        if own:
            client.close()


class _Progress:
    """A rich progress bar over cycles (no-op when disabled)."""

    def __init__(self, total: int, enabled: bool, where: str) -> None:
        self.enabled = enabled
        self.total = total
        self.where = where
        self._p: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            p = Progress(
                TextColumn(f"refining cycles ({self.where})"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            p.__enter__()
            self._p, self._task = p, p.add_task("cycles", total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._p is not None and self._task is not None:
            self._p.advance(self._task, n)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._p is not None:
            self._p.__exit__(exc_type, exc, tb)


def summarize(df) -> Any:
    """Per (policy, grade): cycles, median days, worst purity, mean DC/total energy, kg/day,
    share ended by breakthrough, trips — a DataFrame for reports."""
    g = df.groupby(["policy", "grade"], sort=True)
    return g.agg(
        cycles=("scenario", "size"),
        days_median=("days", "median"),
        days_p10=("days", lambda x: float(np.percentile(x, 10))),
        purity_min_pct=("purity_min_pct", "min"),
        dc_kwh_per_kg=("dc_kwh_per_kg", "mean"),
        total_kwh_per_kg=("total_kwh_per_kg", "mean"),
        kg_per_day=("kg_per_day", "mean"),
        breakthrough_share=("breakthrough_end", "mean"),
        trips=("trip", "sum"),
    ).reset_index()


def trips_table(df) -> Any:
    """Every trip cause with its cycles: count, first and last day, policies and grades, the
    first scenarios (a DataFrame; empty when nothing tripped)."""
    import pandas as pd

    t = df[df["trip"]]
    if t.empty:
        return pd.DataFrame(columns=["cause", "cycles", "days_min", "days_max", "policies", "grades", "scenarios"])
    kind = t["trip_cause"].str.split(":").str[0]
    rows = []
    for cause, g in t.groupby(kind, sort=True):
        pg = g.groupby(["policy", "grade"]).size().sort_values(ascending=False)
        rows.append(
            {
                "cause": cause,
                "cycles": int(len(g)),
                "days_min": float(g["days"].min()),
                "days_max": float(g["days"].max()),
                "t_high_c_max": float(g["t_high_c"].max()),
                "t_low_c_min": float(g["t_low_c"].min()),
                "policies": ", ".join(f"{p} × {gr}: {n}" for (p, gr), n in pg.items()),
                "scenarios": ", ".join(str(int(x)) for x in g["scenario"].head(12)) + (" …" if len(g) > 12 else ""),
            }
        )
    return pd.DataFrame(rows).sort_values("cycles", ascending=False, kind="stable").reset_index(drop=True)
