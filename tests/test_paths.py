"""Where runs live: the one rule that the writer and every reader resolve a store by."""

from __future__ import annotations

from rkrepro import paths


def test_default_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert paths.resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert paths.sqlite_path(paths.resolve_tracking_uri()) == tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert paths.resolve_tracking_uri() == "http://tracking:5000"
    assert paths.sqlite_path("http://tracking:5000") is None
