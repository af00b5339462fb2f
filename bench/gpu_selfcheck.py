"""The CUDA path's correctness checks, as one plain script (the GPU machine has no mlflow and
may lack pytest): the real Trainer on synthetic CIFAR-format files.

    python3 bench/gpu_selfcheck.py --out DIR            (on a GPU: every check on CUDA)
    python3 bench/gpu_selfcheck.py --out DIR --cpu-smoke (CI: the same code, CPU, tiny sizes,
                                                          the CUDA step's logic emulated)

Checks, each one line ``CHECK name: OK|FAIL|SKIP detail`` and a record in DIR/selfcheck.json:
- ``variants``: per-step losses of graph on/off x fp32/tf32/bf16 from one init on the same
  batches; graph vs eager within GRAPH_RTOL (same precision), tf32 and bf16 vs fp32 within
  BF16_RTOL;
- ``resume``: a run (fp32, the default) stopped by SIGTERM mid-epoch and one killed by SIGKILL,
  each resumed in a fresh process, end with the uninterrupted run's metrics (within tolerance;
  whether they are bitwise equal is recorded);
- ``oom``: a run under a small memory cap fails with the one-line ``--memory-efficient`` hint.
Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

# Same precision, graph replay vs eager: only kernel choice differs (and fp32 lr vs float).
GRAPH_RTOL = 1e-3
# bf16 autocast vs fp32 on the same batches from the same init: first step, then every step.
BF16_FIRST_RTOL, BF16_RTOL = 2e-2, 5e-2
# Resumed vs uninterrupted (different warm-up/replay split): final train loss, test error.
RESUME_LOSS_RTOL, RESUME_ERROR_ABS = 5e-2, 5.0


def _setup(cpu_smoke: bool) -> dict[str, Any]:
    return {
        "device": "cpu" if cpu_smoke else "cuda",
        "spec": ("densenet-bc", 10, 4) if cpu_smoke else ("densenet-bc", 40, 12),
        "n_train": 88 if cpu_smoke else 2_048 + 40,  # a partial tail batch each epoch
        "n_test": 24 if cpu_smoke else 500,
        "batch": 16 if cpu_smoke else 64,
        "epochs": 2 if cpu_smoke else 3,
    }


def _trainer(
    cfg: dict[str, Any], root: Path, ck: Path, fast: Any, precision: str = "fp32", **kw: Any
) -> Any:
    import torch

    from rkrepro.data import check, cifar
    from rkrepro.models import build_model
    from rkrepro.spec import ModelSpec, Protocol
    from rkrepro.training.checkpoints import Checkpoints
    from rkrepro.training.loop import Trainer
    from rkrepro.training.setup import Execution
    from rkrepro.training.state import seed_everything

    device = torch.device(cfg["device"])
    family, depth, k = cfg["spec"]
    spec = ModelSpec(family, "cifar10", depth, k)  # type: ignore[arg-type]
    protocol = Protocol(
        "cifar10", "pad 4 + crop + flip", cfg["batch"], cfg["epochs"], 0.1, 0.9, 1e-4, (2,)
    )
    os.environ[check.VERIFY_ENV], os.environ[check.DOWNLOAD_ENV] = "0", "0"
    tr_split, te_split = cifar.load_cifar("cifar10", root)
    seed_everything(0)
    execution = Execution.local(device, precision, fast, emulate_cuda=device.type == "cpu")
    tr, te = cifar.cifar_batches(
        tr_split, te_split, cfg["batch"], device, 0, None, execution.channels_last
    )
    return Trainer(build_model(spec), tr, te, protocol, execution, Checkpoints(ck), **kw)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def check_variants(cfg: dict[str, Any], root: Path, tmp: Path) -> tuple[bool, str, dict]:
    from rkrepro.planning.fast_path import FastPath

    precisions = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16-autocast"}
    variants = {
        f"{mode}_{short}": (FastPath(cuda_graph=mode == "graph"), recorded)
        for mode in ("graph", "eager")
        for short, recorded in precisions.items()
    }
    losses: dict[str, list[float]] = {}
    for name, (fast, precision) in variants.items():
        trainer = _trainer(cfg, root, tmp / name, fast, precision)
        before, out = 0.0, []
        for x, y in trainer.train_batches.batches(1):
            trainer.train_step(x, y)
            now = float(trainer.running_sums[0])
            out.append((now - before) / y.numel())
            before = now
        if fast.cuda_graph and (trainer.captured is None or trainer.captured.static is None):
            return False, f"{name}: the step was never captured", {"losses": losses}
        losses[name] = out
    problems = []
    for prec in precisions:
        g, e = losses[f"graph_{prec}"], losses[f"eager_{prec}"]
        worst = max(_rel(a, b) for a, b in zip(g, e, strict=True))
        if worst > GRAPH_RTOL:
            problems.append(f"graph vs eager {prec}: max rel {worst:.1e} > {GRAPH_RTOL:g}")
    for mode in ("graph", "eager"):
        for other in ("tf32", "bf16"):
            b, f = losses[f"{mode}_{other}"], losses[f"{mode}_fp32"]
            first, worst = _rel(b[0], f[0]), max(_rel(p, q) for p, q in zip(b, f, strict=True))
            if first > BF16_FIRST_RTOL or worst > BF16_RTOL:
                problems.append(f"{other} vs fp32 {mode}: first {first:.1e}, max {worst:.1e}")
    steps = len(losses["graph_bf16"])
    detail = "; ".join(problems) or (
        f"{steps} steps, graph vs eager <= {GRAPH_RTOL:g}, tf32/bf16 vs fp32 <= {BF16_RTOL:g}"
    )
    return not problems, detail, {"losses": losses}


def child_main(args: argparse.Namespace) -> int:
    """One training process of the resume check; ``--die-at E:S`` stops it there by a signal."""
    from rkrepro.planning.fast_path import FastPath
    from rkrepro.training.signals import Interrupted

    cfg = json.loads(args.child_cfg)
    die = args.die_at.split(":") if args.die_at else None

    class Hook:
        epoch = 0

        def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
            self.epoch = epoch

        def step(self, done: int, loss: float, error: float) -> None:
            if die and self.epoch == int(die[0]) and done >= int(die[1]):
                os.kill(os.getpid(), signal.SIGKILL if die[2] == "KILL" else signal.SIGTERM)

        def epoch_end(self, record: Any) -> None:
            pass

    trainer = _trainer(cfg, Path(args.root), Path(args.child), FastPath(), progress=Hook())
    state = trainer.checkpoints.load()
    if state is not None:
        trainer.restore(state)
    try:
        with trainer.stop.installed():  # SIGTERM -> checkpoint, exit 143 (as rkrepro run)
            history = trainer.fit()
    except Interrupted as stop:
        return stop.exit_code
    final = history[-1]
    print(json.dumps({"train_loss": final.train_loss, "test_error": final.test_error}))
    return 0


def _child(cfg: dict, root: Path, ck: Path, die: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, __file__, "--child", str(ck), "--root", str(root)]
    argv += ["--child-cfg", json.dumps(cfg)] + (["--die-at", die] if die else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def check_resume(cfg: dict[str, Any], root: Path, tmp: Path) -> tuple[bool, str, dict]:
    ref = _child(cfg, root, tmp / "ref")
    if ref.returncode != 0:
        return False, f"uninterrupted run failed: {ref.stderr[-500:]}", {}
    want = json.loads(ref.stdout.strip().splitlines()[-1])
    results, problems = {"uninterrupted": want}, []
    for how, code in (("TERM", 128 + signal.SIGTERM), ("KILL", -signal.SIGKILL)):
        ck = tmp / how
        first = _child(cfg, root, ck, f"2:3:{how}")
        if first.returncode != code:
            problems.append(f"{how}: exit {first.returncode}, expected {code}")
            continue
        again = _child(cfg, root, ck)
        if again.returncode != 0:
            problems.append(f"{how}: resume failed: {again.stderr[-300:]}")
            continue
        got = json.loads(again.stdout.strip().splitlines()[-1])
        results[how] = {**got, "bitwise": got == want}
        if _rel(got["train_loss"], want["train_loss"]) > RESUME_LOSS_RTOL or (
            abs(got["test_error"] - want["test_error"]) > RESUME_ERROR_ABS
        ):
            problems.append(f"{how}: {got} vs uninterrupted {want}")
    detail = "; ".join(problems) or f"SIGTERM and SIGKILL mid-epoch 2, resumed: {results}"
    return not problems, detail, results


def check_oom(cfg: dict[str, Any], root: Path, tmp: Path) -> tuple[bool | None, str, dict]:
    import torch

    from rkrepro.planning.fast_path import FastPath
    from rkrepro.training.signals import MEMORY_EFFICIENT_HINT, RunFailure

    if cfg["device"] != "cuda":
        return None, "needs CUDA", {}
    big = {**cfg, "spec": ("densenet-bc", 100, 12), "batch": 1024}
    torch.cuda.set_per_process_memory_fraction(0.01)  # ~1.4 GB of an H200
    try:
        trainer = _trainer(big, root, tmp / "oom", FastPath())
        trainer.fit()
    except RunFailure as failure:
        ok = MEMORY_EFFICIENT_HINT in failure.reason and "\n" not in failure.reason
        return ok, failure.reason, {"reason": failure.reason}
    except torch.cuda.OutOfMemoryError as error:
        return False, f"raw OutOfMemoryError escaped the trainer: {str(error)[:200]}", {}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    return False, "no out-of-memory under a 1% memory cap", {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check")
    p.add_argument("--cpu-smoke", action="store_true")
    p.add_argument("--only", default="variants,resume,oom")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-cfg", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--die-at", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    import helpers_cifar

    cfg = _setup(args.cpu_smoke)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checks = {"variants": check_variants, "resume": check_resume, "oom": check_oom}
    results: dict[str, Any] = {"config": cfg}
    failed = False
    with tempfile.TemporaryDirectory(prefix="rkrepro-selfcheck-") as tmp:
        root = Path(tmp) / "data"
        helpers_cifar.write_random_cifar10(root, cfg["n_train"], cfg["n_test"])
        for name in args.only.split(","):
            started = time.perf_counter()
            try:
                ok, detail, extra = checks[name](cfg, root, Path(tmp) / name)
            except Exception as error:  # noqa: BLE001 - a broken check is a failed check
                ok, detail, extra = False, f"{type(error).__name__}: {error}", {}
                traceback.print_exc()
            seconds = time.perf_counter() - started
            word = "SKIP" if ok is None else ("OK" if ok else "FAIL")
            failed |= ok is False
            print(f"CHECK {name}: {word} ({seconds:.0f} s) {detail}", flush=True)
            results[name] = {"status": word, "detail": detail, "seconds": seconds, **extra}
            (out / "selfcheck.json").write_text(json.dumps(results, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
