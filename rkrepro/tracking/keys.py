"""MLflow names (experiments, tags, metrics) shared by the writers (:mod:`.runs`,
:mod:`.reports`) and the readers (:mod:`.reader`, ``report``, ``status``) of runs.

Kept free of mlflow and torch so any module can import it cheaply.
"""

from __future__ import annotations

# One MLflow experiment per table; its name is the table id prefixed.
EXPERIMENT_PREFIX = "rkrepro/"

# MLflow 3's UI opens an experiment in the view of its kind; "custom_model_development" is its
# model-training kind (the runs table), checked against mlflow 3.17's UI bundle and
# mlflow/assistant/skills/mlflow-onboarding. Without it the UI shows the GenAI traces view.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
# The query parameter that makes MLflow 3's UI show an experiment in its model-training workflow
# (the sidebar's "Model training"), whatever the browser chose before: the UI reads the workflow
# from it, else from the browser's storage, whose default is GenAI (mlflow 3.17's UI bundle,
# WorkflowTypeProvider).
UI_TRAINING_VIEW = "workflowType=machine_learning"
# The runs table's columns: MLflow 3's UI opens a *shared view* named by the URL parameter
# ``viewStateShareKey=KEY`` from the experiment tag ``mlflow.sharedViewState.KEY`` (JSON of the
# runs table's UI state: selected columns, sort; mlflow 3.17's UI bundle, useSharedExperimentView
# State). rkrepro tags each experiment with one, so the runs open with the numbers that matter
# instead of "Show more columns (70 total)".
UI_VIEW_KEY = "rkrepro"
TAG_UI_VIEW = "mlflow.sharedViewState." + UI_VIEW_KEY
# The data set of a run, as an MLflow dataset input of this context.
DATASET_CONTEXT_KEY = "mlflow.data.context"
DATASET_CONTEXT_TRAINING = "training"

# Tags identifying a run: one run per (table, row, model, share, seed).
TAG_TABLE = "rkrepro.table"  # "table1"
TAG_ROW = "rkrepro.row"  # "densenet-bc-k12"
TAG_MODEL = "rkrepro.model"  # "original" or "RKNet-1x8_1x2_1x2"
TAG_SHARE = "rkrepro.share"  # "true" / "false"
TAG_SEED = "rkrepro.seed"  # "0"
TAG_PROTOCOL = "rkrepro.protocol"  # PROTOCOL_PAPER or PROTOCOL_SHORTENED
TAG_CONFIG_HASH = "rkrepro.config_hash"
TAG_GIT_COMMIT = "rkrepro.git_commit"
TAG_DEVICE = "rkrepro.device"
TAG_FAILURE = "rkrepro.failure"  # reason, on FAILED runs
TAG_FINAL_WEIGHTS = "rkrepro.final_weights"  # path of a finished run's final.pt
TAG_TORCH = "rkrepro.torch_version"
TAG_CUDA = "rkrepro.cuda_version"
TAG_GIT_DIRTY = "rkrepro.git_dirty"
TAG_PRECISION = "rkrepro.precision"  # "fp32", "tf32", "bf16-autocast" or "fp16-amp"
TAG_FAST_PATH = "rkrepro.fast_path"  # the switches in effect, e.g. "channels_last,cpu_malloc"
# Where and how a run trained (environment tags, refreshed on every resume).
TAG_WORLD_SIZE = "rkrepro.world_size"  # processes of a data-parallel run; "1" otherwise
TAG_BATCHNORM = "rkrepro.batchnorm"  # "per-gpu" or "sync", data-parallel runs only
TAG_SLURM_JOB = "rkrepro.slurm_job_id"  # "<array job>_<task>" under SLURM
TAG_SLURM_RESTARTS = "rkrepro.slurm_restart_count"  # requeues after preemption / time limit
# "HOST PID START" of the process writing the run (rkrepro.processes): status tells a RUNNING
# run whose process is gone from one that trains.
TAG_PROCESS = "rkrepro.process"
# Set on a run replaced by a newer one (``--force``, or a lost checkpoint); readers skip it.
TAG_SUPERSEDED = "rkrepro.superseded_by"

# TAG_PRECISION values (``rkrepro run --precision``): the paper's fp32 (TF32 off), TF32 tensor
# cores for convolutions and matrix products, fp16 autocast with loss scaling, or bf16 autocast
# (weights, BatchNorm and SGD stay fp32 in the last three).
PRECISION_FP32 = "fp32"
PRECISION_TF32 = "tf32"
PRECISION_FP16_AMP = "fp16-amp"
PRECISION_BF16 = "bf16-autocast"

PROTOCOL_PAPER = "paper"
PROTOCOL_SHORTENED = "shortened"

# Metrics. Per-epoch series use step = epoch (1-based).
M_TRAIN_LOSS = "train_loss"
M_TRAIN_ERROR = "train_error"
M_TEST_ERROR = "test_error"  # % (top-1 on ImageNet)
M_TEST_TOP5 = "test_top5_error"  # %, ImageNet only
M_LR = "lr"
M_EPOCH_SECONDS = "epoch_seconds"
M_IMAGES_PER_S = "images_per_s"
M_PEAK_MEMORY = "peak_memory_mb"
M_FINAL_TEST_ERROR = "final_test_error"  # the paper's convention: last epoch
M_FINAL_TEST_TOP5 = "final_test_top5_error"
M_BEST_TEST_ERROR = "best_test_error"  # labelled as best, never reported as the paper's number
M_PARAMS_PAPER = "params_paper"
M_PARAMS_TOTAL = "params_total"


def experiment_name(table_id: str) -> str:
    return EXPERIMENT_PREFIX + table_id


# The report's plots: one run per ``rkrepro report --plots`` in this experiment, tagged with the
# report's name; a local store keeps their artifacts under runs/artifacts/reports.
REPORTS_EXPERIMENT = experiment_name("reports")
REPORTS_ARTIFACTS = "reports"
TAG_REPORT = "rkrepro.report"


def ui_url(base_url: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs (with rkrepro's columns), or of one run, in
    the training view."""
    page = f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
    if run_id:
        return f"{page}/{run_id}?{UI_TRAINING_VIEW}"
    return f"{page}?viewStateShareKey={UI_VIEW_KEY}&{UI_TRAINING_VIEW}"


def ui_view_state() -> str:
    """The runs table rkrepro's experiments open with (:data:`TAG_UI_VIEW`): run names wide
    enough to be read whole (``densenet-bc-k24-d250 1x21_1x2_1x2+share s0``: the name says the
    cell, seed and how the run differs), its final and best test error, the latest epoch's, how
    fast it trained and its parameter count; newest first."""
    import json

    name = "attributes.`Run Name`"
    metrics = (M_FINAL_TEST_ERROR, M_BEST_TEST_ERROR, M_TEST_ERROR, M_IMAGES_PER_S, M_PARAMS_PAPER)
    columns = [f"metrics.`{metric}`" for metric in metrics]
    state = {
        "selectedColumns": columns,
        "columnOrder": [name],
        "columnWidths": {name: 360},
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }
    return json.dumps(state)
