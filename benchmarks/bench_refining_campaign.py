"""Refining campaigns: cycles per second on a local process pool vs a Dask cluster of 2 workers.

``python -m benchmarks.bench_refining_campaign [--quick] [--cycles N] [--repeats R]``

Both run the same campaign (3 kA config, 4 policies × 4 grades, 5 % spread, dt = control
period = 600 s, 250-cycle batches) with 2 worker processes: ``ProcessPoolExecutor``
(forkserver) vs ``distributed.LocalCluster(n_workers=2, threads_per_worker=1,
processes=True)``, alternating, after one warm-up run each (Numba kernels loaded from
the cache in every worker). Wall time includes the local pool's start-up (it is part
of every local run); the cluster's start-up is measured once on its own (a real cluster
is started once and reused). Results must be identical (checked). Writes
``benchmarks/results/refining_campaign.json`` (+ ``.md``).

A real cluster grows the same way: the campaign is cut into independent batches (no
communication between them, results of a few kB each), so throughput grows with workers
until there are fewer batches than workers — use ``--batch-size`` so that each worker
gets several (docs/operations.md, "Refining pots").
"""

from __future__ import annotations

import logging
import time
from typing import Any

from benchmarks.common import base_parser, header, summarize, write_result


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "refining_campaign")
    p.add_argument("--cycles", type=int, default=None, help="cycles per run (default: 1000; --quick: 100)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs of each (default: 2; --quick: 1)")
    args = p.parse_args(argv)
    n = args.cycles or (100 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 2)

    import pandas as pd
    from distributed import Client, LocalCluster

    from refining.campaign import CampaignSpec, run_campaign
    from refining.config import CONFIG_3KA, load_refining_config
    from refining.controller import RefiningPolicy, policy_presets

    cfg = load_refining_config(CONFIG_3KA)
    pre = policy_presets(cfg)
    batch = 250 if n >= 500 else max(10, n // 4)

    def spec(cycles: int) -> CampaignSpec:
        return CampaignSpec(
            n_cycles=cycles,
            policies=tuple(pre[k] for k in ("nominal", "high_current", "low_current", "hot_trim")),
            dt_s=600.0,
            control_period_s=600.0,
            batch_size=batch,
        )

    logging.getLogger("distributed").setLevel(logging.ERROR)
    local_s: list[float] = []
    dask_s: list[float] = []
    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    )
    client = Client(cluster)
    client.wait_for_workers(2)
    cluster_start_s = time.perf_counter() - t0
    identical = True
    try:
        warm = spec(2 * batch if n >= 2 * batch else n)
        run_campaign(cfg, warm, RefiningPolicy, workers=2, progress=False)
        run_campaign(cfg, warm, RefiningPolicy, scheduler=client, progress=False)
        ref: Any = None
        # the local pool's own start-up (processes, imports, kernels from the cache): a
        # 2-cycle campaign in two batches is nearly all start-up
        tiny = CampaignSpec(n_cycles=2, policies=(pre["nominal"],), dt_s=600.0, control_period_s=600.0, batch_size=1)
        pool_start_s: list[float] = []
        for _ in range(repeats):
            t = time.perf_counter()
            run_campaign(cfg, tiny, RefiningPolicy, workers=2, progress=False)
            pool_start_s.append(time.perf_counter() - t)
        for _ in range(repeats):
            t = time.perf_counter()
            df_l = run_campaign(cfg, spec(n), RefiningPolicy, workers=2, progress=False)
            local_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            df_d = run_campaign(cfg, spec(n), RefiningPolicy, scheduler=client, progress=False)
            dask_s.append(time.perf_counter() - t)
            try:
                pd.testing.assert_frame_equal(df_l, df_d, check_exact=True)
            except AssertionError:
                identical = False
            ref = df_l
    finally:
        client.close()
        cluster.close()
    doc = header("refining_campaign", args.quick)
    best_l, best_d = min(local_s), min(dask_s)
    doc.update(
        {
            "cycles": n,
            "batch_size": batch,
            "workers": 2,
            "local_wall_s": summarize(local_s, digits=3),
            "dask_wall_s": summarize(dask_s, digits=3),
            "local_cycles_per_s": round(n / best_l, 2),
            "dask_cycles_per_s": round(n / best_d, 2),
            "dask_over_local": round(best_l / best_d, 3),
            "dask_cluster_start_s": round(cluster_start_s, 2),
            "local_pool_start_s": summarize(pool_start_s, digits=3),
            "local_cycles_per_s_without_start": round(n / max(best_l - min(pool_start_s), 1e-9), 2),
            "identical": identical,
            "trips": int(ref["trip"].sum()) if ref is not None else None,
        }
    )
    md = (
        f"# Refining campaign throughput ({n} cycles, 2 workers{', quick' if args.quick else ''})\n\n"
        f"| scheduler | best wall [s] | cycles/s |\n|---|---|---|\n"
        f"| local process pool (forkserver) | {best_l:.1f} | {n / best_l:.1f} |\n"
        f"| Dask LocalCluster, 2 worker processes | {best_d:.1f} | {n / best_d:.1f} |\n\n"
        f"Dask / local throughput: {best_l / best_d:.2f}. The local pool starts its processes on every run "
        f"({min(pool_start_s):.1f} s of its wall time; without it {n / max(best_l - min(pool_start_s), 1e-9):.1f} "
        f"cycles/s); the Dask cluster started once ({cluster_start_s:.1f} s) and is reused. "
        f"Results identical: {identical}. "
        f"Machine load average (1, 5, 15 min): {doc['machine'].get('loadavg_1_5_15')}.\n"
    )
    out = write_result(doc, args.out, md)
    print(md)
    print(f"-> {out}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
