"""Readings: the choices the paper leaves open, as data.

Where the paper (or the gap between the paper and the Torch code it trained with) admits more
than one interpretation, rkrepro does not hide its choice in a comment: each table YAML names
the *reading* it uses (``readings:`` per table, overridable per row), ``rkrepro run --reading
NAME=VALUE`` overrides it, and every run records the readings it was trained and reported
under. Two kinds:

* ``training`` readings change what is trained (the network, the numbers): they are part of
  the run identity (config hash), so runs under different readings never share a checkpoint
  or an MLflow run.
* ``reporting`` readings only change which logged number is compared with the paper (both are
  logged every run): they are tags and report labels, not identity, so one training serves both.

Runs trained before readings existed carry no reading tags; :data:`LEGACY` says what they were
trained as (``euler`` wiring, final-epoch error, fp32), and readers resolve missing tags to it.

Torch-free: ``rkrepro show`` and the YAML loader use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rkrepro.errors import TableError
from rkrepro.spec import DEFAULT_RESNET_STAGES, RESNET_STAGES, ModelSpec

TAG_PREFIX = "rkrepro.reading."
PRECISION_TAG = "rkrepro.precision"  # = rkrepro.schema.TAG_PRECISION, older than readings


@dataclass(frozen=True)
class Reading:
    """One open choice: its values, the default, and one line of justification per value."""

    name: str
    kind: str  # "training" or "reporting"
    default: str
    legacy: str  # what runs recorded before readings existed were trained/reported as
    why: Mapping[str, str]  # value -> one-line justification
    scope: str  # where it applies, for `show`

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.why)

    def applies(self, spec: ModelSpec) -> bool:
        """Whether the reading can change anything for ``spec``."""
        if self.name == "resnet_stages":
            return spec.multi_stage_resnet
        return True


READINGS: dict[str, Reading] = {
    r.name: r
    for r in (
        Reading(
            name="resnet_stages",
            kind="training",
            default=DEFAULT_RESNET_STAGES,
            legacy="euler",
            why={
                "concat": "Eq. (7) literally: G_i gets y_n, k_1..k_{i-1} 'separately' "
                "(concatenated, i*C input channels), as in DenseNets and ZhuMai/RKCNN",
                "lincomb": "Section 3's alternative: G_i sees y_n + sum_j a_ij k_j, the step "
                "returns y_n + sum_i b_i k_i, scalars a_ij, b_i learned",
                "euler": "k_i = F_i(y_n + sum_{j<i} k_j): s successive Euler steps, the wiring "
                "runs trained before this reading existed use",
            },
            scope="ResNet variants with an s > 1 period (Table 4)",
        ),
        Reading(
            name="reported_error",
            kind="reporting",
            default="final",
            legacy="final",
            why={
                "final": "the last epoch's test error, the DenseNet paper's convention",
                "best": "the lowest test error over epochs, what the Torch main.lua prints as "
                "'Finished top1'",
            },
            scope="every cell",
        ),
        Reading(
            name="precision",
            kind="training",
            default="fp32",
            legacy="fp32",
            why={
                "fp32": "the Torch code trains in fp32 (-precision single); TF32 off on CUDA",
                "tf32": "--precision tf32: TF32 tensor cores for convolutions and matrix products",
                "bf16-autocast": "--precision bf16: bf16 autocast, weights and SGD in fp32",
                "fp16-amp": "--precision fp16: fp16 autocast with loss scaling",
            },
            scope="every cell (the precision a run was trained in; runs of different "
            "precisions are reported apart)",
        ),
    )
}
assert READINGS["resnet_stages"].choices == RESNET_STAGES

LEGACY: dict[str, str] = {name: r.legacy for name, r in READINGS.items()}
DEFAULTS: dict[str, str] = {name: r.default for name, r in READINGS.items()}


def check(values: Mapping[str, object], where: str) -> dict[str, str]:
    """``values`` validated (known names, known choices); ``where`` starts the error line."""
    checked: dict[str, str] = {}
    for name, value in values.items():
        reading = READINGS.get(str(name))
        if reading is None:
            known = ", ".join(READINGS)
            raise TableError(f"{where}: unknown reading {name!r}; known: {known}")
        if not isinstance(value, str) or value not in reading.choices:
            choices = "|".join(reading.choices)
            raise TableError(f"{where}: reading {name} must be one of {choices}, got {value!r}")
        checked[reading.name] = value
    return checked


def parse_overrides(
    texts: list[str] | tuple[str, ...], option: str = "--reading"
) -> dict[str, str]:
    """``["resnet_stages=lincomb", ...]`` (the ``--reading`` option) -> a checked mapping."""
    pairs: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise TableError(f"{option} {text!r}: expected NAME=VALUE (e.g. resnet_stages=lincomb)")
        pairs[name.strip()] = value.strip()
    return check(pairs, option)


def applicable(readings: Mapping[str, str], spec: ModelSpec) -> dict[str, str]:
    """The readings that can change anything for ``spec``, in :data:`READINGS` order."""
    return {n: readings[n] for n, r in READINGS.items() if n in readings and r.applies(spec)}


def identity(readings: Mapping[str, str], spec: ModelSpec) -> dict[str, str]:
    """The training readings that are part of ``spec``'s run identity: only those that apply
    and, so the hashes of configurations they cannot affect stay what they were, ``precision``
    is left to the run's own precision field (already identity)."""
    return {
        n: v
        for n, v in applicable(readings, spec).items()
        if READINGS[n].kind == "training" and n != "precision"
    }


def tags(readings: Mapping[str, str], spec: ModelSpec) -> dict[str, str]:
    """MLflow tags: one ``rkrepro.reading.NAME`` per applicable reading."""
    return {TAG_PREFIX + n: v for n, v in applicable(readings, spec).items()}


def from_tags(tags: Mapping[str, str], spec: ModelSpec | None = None) -> dict[str, str]:
    """The readings a recorded run was trained/reported under; a run without reading tags
    (trained before readings existed) resolves to :data:`LEGACY`, never to today's defaults."""
    found = {k[len(TAG_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}
    legacy = not found
    if "precision" not in found and tags.get(PRECISION_TAG):  # tagged since the fast path
        found["precision"] = tags[PRECISION_TAG]
    resolved: dict[str, str] = {}
    for name, reading in READINGS.items():
        if spec is not None and not reading.applies(spec):
            continue
        resolved[name] = found.get(name, reading.legacy if legacy else reading.default)
    return resolved


def describe(name: str, value: str) -> str:
    """``resnet_stages = concat: <why>`` for ``show``."""
    return f"{name} = {value}: {READINGS[name].why[value]}"
