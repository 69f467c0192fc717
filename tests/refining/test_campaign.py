"""Refining campaigns: 1,000 cycles, identical on a local process pool and on a Dask cluster.

CI fast path: dt = 600 s with the controller scanning every 600 s (docs/domain.md §5b: the model is
cheap; the Python controller loop is the cost — see the profile notes in
refining/campaign.py). Scenarios span 4 scrap grades × 4 setpoint policies with a 5 %
parameter spread.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from potline import cli
from refining.campaign import (
    CampaignSpec,
    config_sha256,
    make_scenarios,
    read_provenance,
    run_campaign,
    summarize,
    trips_table,
)
from refining.config import CONFIG_3KA, load_refining_config, update_config_text
from refining.controller import RefiningPolicy, policy_presets

POLICIES = ("nominal", "high_current", "low_current", "hot_trim")


@pytest.fixture(scope="module")
def cfg():
    return load_refining_config(CONFIG_3KA)


def _spec(cfg, n, **kw):
    pre = policy_presets(cfg)
    return CampaignSpec(n_cycles=n, policies=tuple(pre[p] for p in POLICIES), dt_s=600.0, control_period_s=600.0, **kw)


@pytest.fixture(scope="module")
def local_1000(cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("camp") / "local.parquet"
    df = run_campaign(cfg, _spec(cfg, 1000), RefiningPolicy, workers=2, progress=False, out=out)
    return df, out


def test_1000_cycles_identical_local_and_dask(cfg, local_1000):
    from distributed import Client, LocalCluster

    df_local, path = local_1000
    assert len(df_local) == 1000
    assert df_local["scenario"].tolist() == list(range(1000))
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        ) as cluster,
        Client(cluster) as client,
    ):
        df_dask = run_campaign(cfg, _spec(cfg, 1000), RefiningPolicy, scheduler=client, progress=False)
        # a scheduler address works too (the CLI path); a small run is enough for that
        df_addr = run_campaign(
            cfg, _spec(cfg, 8, batch_size=4), RefiningPolicy, scheduler=cluster.scheduler_address, progress=False
        )
    pd.testing.assert_frame_equal(df_local, df_dask, check_exact=True)
    assert df_local.equals(df_dask)
    pd.testing.assert_frame_equal(df_addr, df_local.iloc[:8].reset_index(drop=True), check_exact=True)
    # the Parquet file holds the same table
    pd.testing.assert_frame_equal(pd.read_parquet(path), df_local, check_exact=True)
    # provenance: the same config, seed and code, each run naming where it ran
    p_local, p_dask = read_provenance(path), df_dask.attrs["provenance"]
    assert p_local["scheduler"] == "local x2" and p_dask["scheduler"] == "dask client"
    assert df_addr.attrs["provenance"]["scheduler"] == f"dask {cluster.scheduler_address}"
    for key in ("config_sha256", "seed", "code_version", "spec"):
        assert p_local[key] == p_dask[key], key


def test_parquet_outputs_carry_provenance(cfg, local_1000):
    """Config hash, seed, code version and scheduler in the file's metadata, the side JSON and
    (what is the same wherever it ran) on every row."""
    import json

    _df, path = local_1000
    prov = read_provenance(path)
    assert prov["config_sha256"] == config_sha256(cfg) and len(prov["config_sha256"]) == 64
    assert prov["seed"] == 1 and prov["spec"]["n_cycles"] == 1000 and prov["spec"]["policies"] == list(POLICIES)
    assert prov["code_version"].startswith("0.1.0") and prov["scheduler"] == "local x2"
    assert prov["libraries"]["numba"] and prov["created_utc"].endswith("+00:00")
    side = json.loads(path.with_name(path.name + ".provenance.json").read_text())
    assert side == prov
    back = pd.read_parquet(path)
    assert set(back["config_sha256"]) == {prov["config_sha256"]} and set(back["campaign_seed"]) == {1}
    assert set(back["code_version"]) == {prov["code_version"]}
    # a config that differs only in comments hashes the same; a changed value does not
    text = CONFIG_3KA.read_text()
    same = load_refining_config_text(text.replace("# 0.5 A/cm2 at 3 kA", "# comment changed"))
    other = load_refining_config_text(update_config_text(text, {"thermal.loss_w_k": (14.4, "calibrated")}))
    assert config_sha256(same) == config_sha256(cfg) != config_sha256(other)


def load_refining_config_text(text: str):
    import tomllib

    from refining.config import config_from_dict

    return config_from_dict(tomllib.loads(text))


def test_trips_and_their_causes_are_reported(local_1000):
    """Over-temperature trips early in the cycle (high current on the 3 kA pot, whose heater
    cannot take heat out: the Joule heat of +10 % current beats the losses) are counted and
    explained, not hidden in the medians."""
    df, _ = local_1000
    trips = df[df["trip"]]
    assert len(trips) >= 5
    assert (trips["end_reason"] == "temperature_out_of_range").all()
    assert trips["trip_cause"].str.startswith("over-temperature: ").all()
    assert (trips["t_high_c"] >= 900.0).all() and (trips["days"] < 10).all()
    assert set(trips["policy"]) == {"high_current"}
    assert not df[~df["trip"]]["trip_cause"].any()
    t = trips_table(df)
    assert list(t["cause"]) == ["over-temperature"] and int(t["cycles"].iloc[0]) == len(trips)
    assert "high_current ×" in t["policies"].iloc[0]
    s = summarize(df)
    assert int(s["trips"].sum()) == len(trips)


def test_batching_never_changes_a_result(cfg, local_1000):
    """Scenario i depends only on (seed, i): in-process with other batch sizes, same numbers."""
    df_local, _ = local_1000
    df = run_campaign(cfg, _spec(cfg, 40, batch_size=7), RefiningPolicy, workers=1, progress=False)
    pd.testing.assert_frame_equal(df, df_local.iloc[:40].reset_index(drop=True), check_exact=True)
    meta10 = make_scenarios(cfg, _spec(cfg, 10))
    meta20 = make_scenarios(cfg, _spec(cfg, 20))
    np.testing.assert_array_equal(meta10[1], meta20[1][:10])


def test_campaign_results_keep_the_seed_headline(local_1000):
    """Across a 5 % parameter spread the reference grade under the nominal policy keeps the
    seed's headline (docs/domain.md / RUSAL Oct 2025): median cycle 40–45 d ended by breakthrough,
    P1020 in every batch, DC energy ≈ 9 MWh/t. Tolerance: median in band and 10th
    percentile ≥ 37 d for days, 5–95 % of cycles within 8–10 MWh/t (a 5 % spread on
    conductivity and contacts moves the voltage by ~±5 %), every cycle for purity."""
    df, _ = local_1000
    ref = df[(df.policy == "nominal") & (df.grade == "offgrade_fe_cu")]
    assert len(ref) >= 50
    assert 40.0 <= ref["days"].median() <= 45.0
    assert ref["days"].quantile(0.1) >= 37.0
    assert ref["breakthrough_end"].all()
    assert (ref["purity_min_pct"] >= 99.7).all()
    assert 8.5 <= ref["dc_kwh_per_kg"].median() <= 9.5
    assert ref["dc_kwh_per_kg"].quantile(0.05) >= 8.0 and ref["dc_kwh_per_kg"].quantile(0.95) <= 10.0
    # every cycle of the campaign stays P1020, whatever grade or policy
    assert (df["purity_min_pct"] >= 99.7).all()
    s = summarize(df)
    assert set(s["policy"]) == set(POLICIES) and len(s) == 16
    # policies act as physics says: less current → less energy per tonne
    by = df.groupby("policy")["dc_kwh_per_kg"].mean()
    assert by["low_current"] < by["nominal"] < by["high_current"]


def test_cli_campaign_writes_parquet_and_summary(tmp_path, capsys):
    out = tmp_path / "c" / "results.parquet"
    rc = cli.main(
        [
            "campaign",
            "--config",
            str(CONFIG_3KA),
            "--cycles",
            "12",
            "--workers",
            "1",
            "--batch-size",
            "6",
            "--policies",
            "nominal,hot_trim",
            "--grades",
            "offgrade_fe_cu,mixed_si",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    df = pd.read_parquet(out)
    assert (
        len(df) == 12 and set(df.policy) == {"nominal", "hot_trim"} and set(df.grade) == {"offgrade_fe_cu", "mixed_si"}
    )
    html = (out.parent / "summary.html").read_text()
    assert "Refining campaign" in html and "data:image/png;base64," in html
    assert "Provenance" in html and "Trips" in html
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["provenance"]["config_file"] == str(CONFIG_3KA)
    assert summary["provenance"]["scheduler"] == "local x1" and summary["trips"]["cycles"] == int(df["trip"].sum())
    printed = capsys.readouterr().out
    assert "provenance: config" in printed and "cycles/s" in printed


def test_campaign_runs_on_a_calibrated_config(cfg, tmp_path):
    """A calibrated config (conductivity 0.92 S/cm: +8.7 % on the 2.5 V electrolyte drop) is
    what the next campaign runs: the same scenarios, a higher pot voltage, its hash recorded."""
    cal_path = tmp_path / "calibrated.toml"
    cal_path.write_text(
        update_config_text(CONFIG_3KA.read_text(), {"electrolyte.conductivity_s_cm": (0.92, "calibrated")})
    )
    out = tmp_path / "r.parquet"
    rc = cli.main(["campaign", "--config", str(cal_path), "--cycles", "4", "--workers", "1", "--policies", "nominal",
                   "--grades", "offgrade_fe_cu", "--spread", "0", "--out", str(out), "--no-progress", "--no-report"])  # fmt: skip
    assert rc == 0
    cal = pd.read_parquet(out)
    base = run_campaign(cfg, _spec(cfg, 4, spread=0.0, grades=("offgrade_fe_cu",)), RefiningPolicy, workers=1,
                        progress=False)  # fmt: skip
    base = base[base.policy == "nominal"]
    assert cal["u_avg_v"].mean() == pytest.approx(base["u_avg_v"].mean() + 2.5 * (1 / 0.92 - 1), abs=0.03)
    prov = read_provenance(out)
    assert prov["config_file"] == str(cal_path) and prov["config_sha256"] != config_sha256(cfg)


def test_cli_campaign_rejects_unknown_policy(tmp_path, capsys):
    rc = cli.main(
        [
            "campaign",
            "--config",
            str(CONFIG_3KA),
            "--cycles",
            "2",
            "--policies",
            "nominal,turbo",
            "--out",
            str(tmp_path / "x.parquet"),
            "--no-progress",
        ]
    )
    assert rc == 2
    assert "turbo" in capsys.readouterr().err
