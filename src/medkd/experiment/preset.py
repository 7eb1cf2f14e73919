"""Experiment presets: a YAML that names a study's grid, validated and expanded into named runs.

A preset holds a ``base`` run config (everything but the model), the ``teachers`` and ``students`` (each a
model plus config overrides), the distillation ``objectives`` (named term lists), the ``protocol`` axis
(simulated or real sites left out one at a time, k-fold folds, or one fixed split) and per-``budgets``
changes (sizes, schedules, which cells / models / objectives run and with how many seeds). Expansion gives
deterministic run names::

    sites-site1/teacher-unetplusplus/seed0
    sites-site1/student-enet/baseline/seed0
    sites-site1/student-enet/kd-full-from-unetplusplus/seed0

Each teacher is trained once per (protocol cell, seed) and reused by every student distilled from it
(``distill.teacher.run`` points at its run folder); a student of seed ``s`` uses the teacher of seed ``s``
(or of seed ``s mod teacher_seeds`` when a budget trains fewer teachers).
Relative paths (``base.data.root``) are resolved against the current directory when the runs start: run
experiments from the project root.

Example:
    >>> preset = load_preset("experiments/paper_a_acdc.yaml")
    >>> grid = expand_grid(preset, budget="quick", seeds=3)
    >>> grid[0].name
    'sites-site1/teacher-unetplusplus/seed0'
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medkd.config import deep_merge, parse_config
from medkd.distill.objective import study_objective
from medkd.errors import ConfigError, unknown_name_error

__all__ = [
    "BudgetSpec",
    "ExperimentPreset",
    "FloorSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "ProtocolSpec",
    "RunSpec",
    "deep_merge",
    "expand_grid",
    "load_preset",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ProtocolSpec(_Strict):
    """The protocol axis: ``sites`` (leave one site out), ``folds`` (k-fold) or ``fixed`` (one split)."""

    kind: Literal["sites", "folds", "fixed"] = "fixed"
    sites: list[str] | None = Field(None, description="target sites, one cell each (kind 'sites')")
    folds: int | None = Field(None, ge=2, description="k of k-fold cross-validation (kind 'folds')")
    simulated: bool = Field(False, description="sites are simulated from one real dataset (said in the report)")

    @model_validator(mode="after")
    def _check(self) -> ProtocolSpec:
        if self.kind == "sites" and not self.sites:
            raise ValueError("protocol.kind 'sites' needs protocol.sites (the target sites)")
        if self.kind == "folds" and not self.folds:
            raise ValueError("protocol.kind 'folds' needs protocol.folds")
        return self

    def cells(self) -> list[str]:
        """Names of the protocol cells, e.g. ``sites-site1``, ``fold0`` or ``fixed``."""
        if self.kind == "sites":
            return [f"sites-{s}" for s in self.sites or []]
        if self.kind == "folds":
            return [f"fold{i}" for i in range(self.folds or 0)]
        return ["fixed"]

    def cell_config(self, cell: str) -> dict[str, Any]:
        """The ``data.split`` overrides of one cell."""
        if self.kind == "sites":
            return {"data": {"split": {"test_sites": [cell.removeprefix("sites-")]}}}
        if self.kind == "folds":
            return {"data": {"split": {"folds": self.folds, "fold": int(cell.removeprefix("fold"))}}}
        return {}


class ModelSpec(_Strict):
    """A teacher or a student: a zoo model and config overrides deep-merged into the base."""

    model: dict[str, Any]
    label: str | None = Field(None, description="name in the report's tables (default: the key)")
    config: dict[str, Any] = Field(default_factory=dict)
    teachers: list[str] | None = Field(None, description="students only: teachers it may be distilled from")


class ObjectiveSpec(_Strict):
    """A student's training objective: no terms is the student alone, else distillation from a teacher.

    ``study`` copies ``seg_loss`` / ``seg_weight`` / ``terms`` from :data:`medkd.distill.objective.STUDY_OBJECTIVES`;
    explicit keys override them.
    """

    label: str | None = None
    study: str | None = None
    seg_loss: str | None = None
    seg_weight: float | None = Field(None, ge=0)
    terms: list[dict[str, Any]] | None = None
    config: dict[str, Any] = Field(default_factory=dict)

    def resolved(self) -> tuple[str | None, float | None, list[dict[str, Any]]]:
        """(seg loss name, seg weight, terms) after applying ``study``."""
        seg_loss, seg_weight, terms = self.seg_loss, self.seg_weight, self.terms
        if self.study is not None:
            ref = study_objective(self.study)
            seg_loss = seg_loss if seg_loss is not None else ref["seg_loss"]
            seg_weight = seg_weight if seg_weight is not None else ref["seg_weight"]
            terms = terms if terms is not None else ref["terms"]
        return seg_loss, seg_weight, copy.deepcopy(terms or [])


class BudgetSpec(_Strict):
    """What one budget (``quick`` / ``full``) changes and runs."""

    description: str = ""
    cuts: list[str] = Field(default_factory=list, description="what this budget leaves out, said in the report")
    seeds: int = Field(1, ge=1, description="default seeds (``--seeds`` overrides)")
    config: dict[str, Any] = Field(default_factory=dict, description="deep-merged into every run")
    teacher_config: dict[str, Any] = Field(default_factory=dict)
    student_config: dict[str, Any] = Field(default_factory=dict)
    model_kwargs: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                    description="teacher/student key -> model kwargs overrides")
    cells: list[str] | None = Field(None, description="protocol cells to run (default all)")
    teachers: list[str] | None = None
    students: list[str] | None = None
    objectives: dict[str, int | None] | None = Field(
        None, description="objective -> seeds (null: the default seeds); default: every objective")
    teacher_seeds: int | None = Field(
        None, ge=1, description="teachers trained per cell (default: as many as the students' seeds); a student "
        "of seed s uses teacher seed s mod teacher_seeds")
    student_objectives: dict[str, list[str]] | None = Field(
        None, description="student -> the objectives it runs (default: every objective of the budget)")
    hardware: str = Field("", description="what the budget is sized for, e.g. '2-core CPU, ~30 min'")


class FloorSpec(_Strict):
    """What a budget's networks must reach on their test split before its comparisons mean anything.

    The report checks every budget against these floors ("Did the networks learn?"): a teacher below ``teacher``,
    or a student alone more than ``student_gap`` below its teacher, means the budget measured networks that had
    not learned, and the report says so above the tables.
    """

    teacher: float = Field(..., gt=0, le=1, description="each teacher row's mean test Dice must reach this")
    group: str | None = Field(None, description="the class / region whose Dice the teacher floor reads (e.g. WT); "
                                                "default the foreground mean")
    student_gap: float | None = Field(None, gt=0, le=1, description="each student alone within this many Dice "
                                                                    "points (as a fraction) of its teacher")


class ExperimentPreset(_Strict):
    """A whole study grid (see the module docstring)."""

    study: Literal["paper_a", "thesis_b", "kdnet", "generic"] = "generic"
    title: str
    description: str = ""
    base: dict[str, Any]
    protocol: ProtocolSpec = Field(default_factory=ProtocolSpec)
    teachers: dict[str, ModelSpec]
    students: dict[str, ModelSpec]
    objectives: dict[str, ObjectiveSpec]
    baseline: str = Field("baseline", description="the objective of the student alone, compared against")
    headline: str | None = Field(None, description="the study's full objective (headline comparison)")
    budgets: dict[str, BudgetSpec]
    floors: FloorSpec | None = Field(None, description="what the networks must reach for a result to count")

    @model_validator(mode="after")
    def _check_names(self) -> ExperimentPreset:
        if self.baseline not in self.objectives:
            raise ValueError(f"baseline {self.baseline!r} is not one of the objectives {list(self.objectives)}")
        if self.headline is not None and self.headline not in self.objectives:
            raise ValueError(f"headline {self.headline!r} is not one of the objectives {list(self.objectives)}")
        for key, spec in self.students.items():
            for t in spec.teachers or []:
                if t not in self.teachers:
                    raise ValueError(f"students.{key}.teachers names {t!r}, not one of {list(self.teachers)}")
        cells = self.protocol.cells()
        for bname, b in self.budgets.items():
            for kind, names, valid in (("cells", b.cells, cells), ("teachers", b.teachers, self.teachers),
                                       ("students", b.students, self.students),
                                       ("objectives", b.objectives, self.objectives)):
                for n in names or []:
                    if n not in valid:
                        raise ValueError(f"budgets.{bname}.{kind} names {n!r}, not one of {list(valid)}")
            for skey, onames in (b.student_objectives or {}).items():
                for n in [skey, *onames]:
                    if n not in self.students and n not in self.objectives:
                        raise ValueError(f"budgets.{bname}.student_objectives names {n!r}, "
                                         "not a student or objective")
            for n in b.model_kwargs:
                if n not in self.teachers and n not in self.students:
                    raise ValueError(f"budgets.{bname}.model_kwargs names {n!r}, not a teacher or student")
        return self


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = "required key is missing" if first["type"] == "missing" else first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{source}: preset key '{loc}': {msg}"


def load_preset(path: str | Path) -> ExperimentPreset:
    """Read and validate a preset YAML (one-line :class:`ConfigError` on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: preset file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_preset(data, source=str(path))


def parse_preset(data: Any, source: str = "preset") -> ExperimentPreset:
    """Validate a preset mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return ExperimentPreset.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


@dataclass
class RunSpec:
    """One run of the grid."""

    name: str
    kind: Literal["teacher", "student"]
    cell: str
    seed: int
    model_key: str
    objective: str | None = None
    teacher_key: str | None = None
    teacher_run: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short label without the seed, e.g. ``student-enet/kd-full-from-unetplusplus``."""
        return self.name.rsplit("/seed", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "cell": self.cell, "seed": self.seed,
                "model_key": self.model_key, "objective": self.objective, "teacher_key": self.teacher_key,
                "teacher_run": self.teacher_run, "config": self.config}


def _model_block(preset: ExperimentPreset, budget: BudgetSpec, key: str, spec: ModelSpec) -> dict[str, Any]:
    model = copy.deepcopy(spec.model)
    if key in budget.model_kwargs:
        model["kwargs"] = deep_merge(model.get("kwargs", {}) or {}, budget.model_kwargs[key])
    return model


def _run_config(preset: ExperimentPreset, budget: BudgetSpec, cell: str, seed: int, name: str,
                layers: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = deep_merge(preset.base, budget.config)
    cfg = deep_merge(cfg, preset.protocol.cell_config(cell))
    for layer in layers:
        cfg = deep_merge(cfg, layer)
    cfg["name"] = name.replace("/", "_")
    cfg["seed"] = seed
    return cfg


def expand_grid(preset: ExperimentPreset, budget: str = "quick", seeds: int | None = None,
                only: str | None = None, source: str = "preset") -> list[RunSpec]:
    """Expand a preset into its runs, teachers of a (cell, seed) before their students.

    Args:
        preset: the validated preset.
        budget: a key of ``preset.budgets``.
        seeds: default number of seeds (overrides the budget's ``seeds``; objectives with an explicit seed
            count in the budget keep it).
        only: shell-style pattern over run names; a student that matches keeps the teacher it needs.
        source: file name for error messages.

    Returns:
        The runs; every ``config`` is a valid run config (checked with :func:`medkd.config.parse_config`),
        with the teacher's run given as its name (the runner turns it into a folder).
    """
    if budget not in preset.budgets:
        raise unknown_name_error("budget", budget, preset.budgets)
    b = preset.budgets[budget]
    n_default = seeds if seeds is not None else b.seeds
    if n_default < 1:
        raise ConfigError(f"--seeds {n_default}: must be at least 1")
    objectives = b.objectives if b.objectives is not None else {k: None for k in preset.objectives}
    obj_seeds = {k: (n if n is not None else n_default) for k, n in objectives.items()}
    runs: list[RunSpec] = []
    for cell in b.cells or preset.protocol.cells():
        runs.extend(_cell_runs(preset, b, cell, obj_seeds, n_default))
    if only:
        runs = _matching_runs(runs, only)
    for r in runs:
        check = copy.deepcopy(r.config)
        parse_config(check, source=f"{source} [{r.name}]")
    return runs


def _cell_runs(preset: ExperimentPreset, b: BudgetSpec, cell: str, obj_seeds: dict[str, int],
               n_default: int) -> list[RunSpec]:
    """One protocol cell's runs: its teachers (as many seeds as its students use) before its students."""
    students = [run for skey in b.students or list(preset.students)
                for run in _student_runs(preset, b, cell, skey, obj_seeds)]
    used: dict[str, int] = {}
    for run in students:
        if run.teacher_key is not None:
            used[run.teacher_key] = max(used.get(run.teacher_key, 0), _teacher_seed(b, run.seed) + 1)
    teachers = [RunSpec(f"{cell}/teacher-{tkey}/seed{seed}", "teacher", cell, seed, tkey,
                        config=_teacher_config(preset, b, cell, seed, tkey))
                for tkey in b.teachers or list(preset.teachers)
                for seed in range(max(used.get(tkey, 0), b.teacher_seeds or n_default))]
    return teachers + students


def _student_runs(preset: ExperimentPreset, b: BudgetSpec, cell: str, skey: str,
                  obj_seeds: dict[str, int]) -> list[RunSpec]:
    """One student's runs in a cell: each objective of the budget, from each teacher it may learn from, per seed."""
    sspec = preset.students[skey]
    allowed = [t for t in b.teachers or list(preset.teachers) if sspec.teachers is None or t in sspec.teachers]
    only_objectives = (b.student_objectives or {}).get(skey)
    runs: list[RunSpec] = []
    for okey, n_seeds in obj_seeds.items():
        if only_objectives is not None and okey not in only_objectives:
            continue
        has_terms = bool(preset.objectives[okey].resolved()[2])
        for tkey in allowed if has_terms else [None]:
            runs.extend(_student_run(preset, b, cell, skey, okey, tkey, seed) for seed in range(n_seeds))
    return runs


def _student_run(preset: ExperimentPreset, b: BudgetSpec, cell: str, skey: str, okey: str, tkey: str | None,
                 seed: int) -> RunSpec:
    """One student run: its name, and its config layered base < budget < cell < student < objective."""
    sspec, ospec = preset.students[skey], preset.objectives[okey]
    seg_loss, seg_weight, terms = ospec.resolved()
    name = f"{cell}/student-{skey}/{okey if tkey is None else f'{okey}-from-{tkey}'}/seed{seed}"
    extra: dict[str, Any] = {"model": _model_block(preset, b, skey, sspec)}
    seg = {k: v for k, v in (("name", seg_loss), ("weight", seg_weight)) if v is not None}
    if seg:
        extra["train"] = {"seg_loss": seg}
    teacher_run, t_seed = None, _teacher_seed(b, seed)
    if tkey is not None:
        teacher_run = f"{cell}/teacher-{tkey}/seed{t_seed}"
        extra["distill"] = {"teacher": {"run": teacher_run}, "terms": terms}
    cfg = _run_config(preset, b, cell, seed, name,
                      [sspec.config, budget_layer(b.student_config), ospec.config, extra])
    if tkey is not None:
        t_channels = _teacher_config(preset, b, cell, t_seed, tkey).get("data", {}).get("channels")
        if t_channels is not None and t_channels != cfg.get("data", {}).get("channels"):
            cfg["data"]["teacher_channels"] = t_channels
    return RunSpec(name, "student", cell, seed, skey, okey, tkey, teacher_run, cfg)


def _teacher_seed(b: BudgetSpec, student_seed: int) -> int:
    """The teacher seed a student of ``student_seed`` distils from."""
    return student_seed % b.teacher_seeds if b.teacher_seeds else student_seed


def _matching_runs(runs: list[RunSpec], only: str) -> list[RunSpec]:
    """The runs whose name matches ``only`` (shell pattern or substring), with the teachers they need."""
    keep = {r.name for r in runs if fnmatch.fnmatch(r.name, only) or only in r.name}
    keep |= {r.teacher_run for r in runs if r.name in keep and r.teacher_run}
    return [r for r in runs if r.name in keep]


def budget_layer(layer: dict[str, Any]) -> dict[str, Any]:
    """A budget's student / teacher config layer (a copy)."""
    return copy.deepcopy(layer or {})


def _teacher_config(preset: ExperimentPreset, b: BudgetSpec, cell: str, seed: int, tkey: str) -> dict[str, Any]:
    tspec = preset.teachers[tkey]
    name = f"{cell}/teacher-{tkey}/seed{seed}"
    return _run_config(preset, b, cell, seed, name,
                       [tspec.config, budget_layer(b.teacher_config), {"model": _model_block(preset, b, tkey, tspec)}])
