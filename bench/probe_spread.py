"""How much the CPU probe of ``rkrepro plan --device cpu`` / ``run --dry-run`` moves between
repetitions, and between two cells of nearly equal FLOPs, before and after it was made worth
reading.

Two cells of Table 1, DenseNet-BC k=12: the original (0.576 GFLOPs per image) and
RKNet-8x1_2x1_2x1 (0.562 GFLOPs). Each repetition is a fresh process that probes both cells in
that order (the first cell of a process used to pay for the cold start); the repetitions of the
two probes alternate, so that both meet the machine's load of the moment. The probes:

- *before*: the probe as it was (one warm-up step, then two timed steps of 16 images, the
  model placed without the run's process settings), reproduced here verbatim as the baseline;
- *after*: :func:`rkrepro.estimate.probe.probe_cells` (one thread, the run's placement, two
  warm-up steps, then the row's cells in turn, one timed step each, until each has filled a
  second and at least three steps; the median step). Its rate is per core, the old one per
  process (all threads): compare spreads and ratios, not the rates.

It prints, per probe, each repetition's images/s of both cells, the spread of each cell over the
repetitions (max / min) and the ratio of the two cells (which equal FLOPs should keep near 1),
then ``before / after`` for both::

    python3 bench/probe_spread.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CELLS = ("original", "RKNet-8x1_2x1_2x1")


def _old_probe(cell) -> float:
    """The CPU probe before: 1 warm-up and 2 fp32 SGD steps of 16 images (images/s)."""
    import torch

    from rkrepro.models import build_model, input_size_for

    model = build_model(cell.spec).to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    batch = min(cell.protocol.batch_size, 16)
    images = torch.randn(batch, *input_size_for(cell.spec)).to(memory_format=torch.channels_last)
    labels = torch.randint(0, cell.spec.num_classes, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    step()
    start = time.perf_counter()
    for _ in range(2):
        step()
    return 2 * batch / (time.perf_counter() - start)


def _child(kind: str) -> None:
    """One repetition: probe both cells in order, print {model: images/s} as JSON."""
    from rkrepro import paper
    from rkrepro.estimate.probe import probe_cells

    cells = paper.resolve_cells(paper.load_tables(), "table1", "densenet-bc-k12", list(CELLS))
    if kind == "before":
        rates = {cell.model: _old_probe(cell) for cell in cells}
    else:
        probes = probe_cells(cells, "cpu", "fp32")
        rates = {cell.model: probes[cell.key].images_per_s for cell in cells}
    print(json.dumps(rates))


def _once(kind: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _repeat(repeats: int) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Before and after, alternating, so that both meet the machine's load of the moment."""
    before, after = [], []
    for i in range(repeats):
        before.append(_once("before"))
        after.append(_once("after"))
        print(f"  rep {i + 1} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    return before, after


def _describe(kind: str, runs: list[dict[str, float]]) -> tuple[float, float]:
    """Print the repetitions; return (worst spread of a cell over repetitions, worst ratio
    between the two cells within a repetition), both as max/min >= 1."""
    print(f"{kind}:")
    for i, rates in enumerate(runs, start=1):
        ratio = rates[CELLS[0]] / rates[CELLS[1]]
        print(
            f"  rep {i}: {CELLS[0]} {rates[CELLS[0]]:7.1f} img/s, {CELLS[1]} "
            f"{rates[CELLS[1]]:7.1f} img/s, ratio {ratio:.2f}"
        )
    spreads = [max(r[c] for r in runs) / min(r[c] for r in runs) for c in CELLS]
    ratios = [max(r.values()) / min(r.values()) for r in runs]
    for cell, spread in zip(CELLS, spreads, strict=True):
        rates = [r[cell] for r in runs]
        print(f"  {cell}: median {statistics.median(rates):.1f} img/s, spread {spread:.2f}x")
    print(f"  worst ratio between the two cells in one repetition: {max(ratios):.2f}x")
    return max(spreads), max(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("before", "after"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.repeats} reps")
    runs_before, runs_after = _repeat(args.repeats)
    before = _describe("before (1 warm-up, 2 steps, all threads)", runs_before)
    after = _describe("after (1 thread, 2 warm-ups, cells in turn, >= 1 s, median)", runs_after)
    print(f"spread over repetitions, before / after: {before[0]:.2f}x / {after[0]:.2f}x")
    print(f"ratio between equal-FLOP cells, before / after: {before[1]:.2f}x / {after[1]:.2f}x")


if __name__ == "__main__":
    main()
