"""How long ``rkrepro report`` takes on a store with many runs (target: 1,000 runs in < 3 s).

Fills a temporary SQLite MLflow store through the MLflow client (cells of every table, several
seeds, a per-epoch history, some running/failed runs), warms the parameter-count cache, then
times: the report in-process (mlflow search + statistics + markdown), the sqlite3 status fast
path, and the whole CLI in a fresh interpreter (imports included).

    python3 bench/report_speed.py [--runs 1000] [--epochs 30]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fill(uri: str, runs: int, epochs: int) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from rkrepro import paper
    from rkrepro.tracking import keys as mlflow_keys

    client = MlflowClient(tracking_uri=uri)
    cells = paper.all_cells(paper.load_tables())
    experiments = {
        table: client.create_experiment(mlflow_keys.experiment_name(table))
        for table in dict.fromkeys(c.table for c in cells)
    }
    rng = random.Random(0)
    for index in range(runs):
        cell = cells[index % len(cells)]
        seed = index // len(cells)
        tags = {
            mlflow_keys.TAG_TABLE: cell.table,
            mlflow_keys.TAG_ROW: cell.row,
            mlflow_keys.TAG_MODEL: cell.model,
            mlflow_keys.TAG_SHARE: "true" if cell.share else "false",
            mlflow_keys.TAG_SEED: str(seed),
            mlflow_keys.TAG_PROTOCOL: mlflow_keys.PROTOCOL_PAPER if index % 10 else "shortened",
        }
        run_id = client.create_run(experiments[cell.table], tags=tags).info.run_id
        final = float(cell.reported_error or 10.0) + rng.gauss(0.0, 0.2)
        curve = [final + 30.0 / epoch for epoch in range(1, epochs + 1)]
        metrics = [Metric(mlflow_keys.M_TEST_ERROR, v, 0, e) for e, v in enumerate(curve, 1)]
        metrics += [
            Metric(mlflow_keys.M_FINAL_TEST_ERROR, curve[-1], 0, 0),
            Metric(mlflow_keys.M_BEST_TEST_ERROR, min(curve), 0, 0),
        ]
        client.log_batch(run_id, metrics=metrics)
        state = "RUNNING" if index % 37 == 0 else ("FAILED" if index % 41 == 0 else "FINISHED")
        if state != "RUNNING":
            client.set_terminated(run_id, state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rkrepro-bench-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"

    started = time.perf_counter()
    fill(uri, args.runs, args.epochs)
    elapsed = time.perf_counter() - started
    print(f"filled {args.runs} runs x {args.epochs} epochs in {elapsed:.1f} s")

    from rkrepro import paper, report, status
    from rkrepro.report.render.markdown import to_markdown

    cells = paper.all_cells(paper.load_tables())
    started = time.perf_counter()
    report.param_counts(cell.spec for cell in cells)
    elapsed = time.perf_counter() - started
    print(f"parameter-count cache warm-up: {elapsed:.2f} s (once per version of the model code)")

    for reader in ("mlflow", "mlflow", "auto"):
        started = time.perf_counter()
        result, records = report.load_report(uri, reader=reader)
        text = to_markdown(result)
        elapsed = time.perf_counter() - started
        how = "MlflowClient.search_runs" if reader == "mlflow" else "sqlite3 fast path"
        print(
            f"report in-process via {how}: {elapsed:.2f} s for {len(records)} runs, "
            f"{len(text.splitlines())} markdown lines"
        )

    started = time.perf_counter()
    labels = status.cell_status_map(uri, list(paper.load_tables()))
    print(f"status fast path (sqlite3): {time.perf_counter() - started:.3f} s, {len(labels)} cells")

    command = [sys.executable, "-m", "rkrepro", "report", "--format", "markdown"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    print(f"report, CLI in a fresh interpreter (imports included): {elapsed:.2f} s")
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    print(f"REPORT_SECONDS={elapsed:.2f}")


if __name__ == "__main__":
    main()
