"""The arms of the quality benchmark: what each adds to the student-alone run config (see ``run.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medkd.config import deep_merge

UNLABELED = {"data": {"unlabeled_left_out": True, "unlabeled_ratio": 1.0}}
PSEUDO = {"pseudo_label": {"weight": 1.0, "threshold": 0.9}}
BALANCE = {"balance": {"target": 1.0, "mode": "cap", "every": 10}}


def _kd(terms: list[dict[str, Any]], *extra: dict[str, Any]) -> dict[str, Any]:
    return {"distill": merge({"terms": terms}, *extra)}


KL1 = [{"loss": "logits_kl", "weight": 1.0, "temperature": 1.0}]
KL4 = [{"loss": "logits_kl", "weight": 0.5, "temperature": 4.0}]
CWD = [{"loss": "cwd", "weight": 3.0, "temperature": 1.0}]
DIST = [{"loss": "dist", "weight": 1.0, "temperature": 1.0}]


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    priority: int
    overrides: dict[str, Any] = field(default_factory=dict)
    candidate: bool = False  # a recipe candidate (the recipe is chosen among them on validation)
    baseline: str = "alone"  # the arm it is compared with: the student alone on the same schedule
    epochs_factor: int = 1  # times the benchmark's --epochs (a longer schedule, for this arm and its baseline)
    fallback: bool = False  # also shown as medkd recipe ships it: the student alone where it lost on validation
    # Which teacher it distils from: "all", the benchmark's teacher (every training patient, labels included), or
    # "labelled", one trained per seed on that seed's labelled patients only (run.py's ``teacher_half-s<seed>``).
    teacher: str = "all"


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """The parts merged in order (mappings key by key, anything else replaced)."""
    out: dict[str, Any] = {}
    for part in parts:
        out = deep_merge(out, part)
    return out


# Priorities: 0 the baseline, 1 the recipe candidates (unlabelled images + pseudo-labels + balance cap), 2 the
# upper control, 3 the classics on labelled images as published, 4 what separates the recipe's ingredients.
ARMS = [
    Arm("alone", "student alone (50%)", 0),
    Arm("rec_kl1", "KL T=1 + unlabelled + pseudo-labels (balanced)", 1,
        merge(UNLABELED, _kd(KL1, PSEUDO, BALANCE)), True),
    Arm("rec_cwd", "CWD T=1 + unlabelled + pseudo-labels (balanced)", 1,
        merge(UNLABELED, _kd(CWD, PSEUDO, BALANCE)), True),
    Arm("rec_dist", "DIST + unlabelled + pseudo-labels (balanced)", 1,
        merge(UNLABELED, _kd(DIST, PSEUDO, BALANCE)), True),
    Arm("alone100", "student alone (100%, upper control)", 2, {"data": {"train_fraction": 1.0}}),
    Arm("kl1", "logits KL T=1 w=1", 3, _kd(KL1)),
    Arm("kl4", "logits KL T=4 w=0.5", 3, _kd(KL4)),
    Arm("cwd", "CWD T=1 w=3", 3, _kd(CWD)),
    Arm("dist", "DIST T=1 w=1", 3, _kd(DIST)),
    Arm("rec_kl4", "KL T=4 + unlabelled + pseudo-labels (balanced)", 4, merge(UNLABELED, _kd(KL4, PSEUDO, BALANCE))),
    Arm("kl1_u", "KL T=1 + unlabelled (no pseudo-labels, no balance)", 4, merge(UNLABELED, _kd(KL1))),
    # The recipe (rec_cwd) without one of its parts: is it the distillation term or the teacher's pseudo-labels that
    # pays? pl_u is self-training on the teacher's labels (no distillation term, so nothing to balance).
    Arm("pl_u", "pseudo-labels only + unlabelled (no distillation term)", 4, merge(UNLABELED, _kd([], PSEUDO))),
    Arm("rec_cwd_nopl", "CWD T=1 + unlabelled (balanced), no pseudo-labels", 4, merge(UNLABELED, _kd(CWD, BALANCE))),
    # What `medkd recipe` trains when a user has no images without labels (train_fraction 1, no data.unlabeled):
    # the recipe's CWD term and balance cap on the labelled images only (here, the 50% of patients with labels).
    Arm("cwd_bal", "CWD T=1 w=3 balanced, labelled only (the recipe without images without labels)", 4,
        _kd(CWD, BALANCE), fallback=True),
    # Priority 5, the patient schedule: distillation is said to need long schedules ("a good teacher is patient and
    # consistent"); both the student alone and the recipe get 3x the epochs, and each is compared with the other.
    Arm("alone_x3", "student alone (50%), 3x epochs", 5, epochs_factor=3, baseline="alone_x3"),
    Arm("rec_cwd_x3", "CWD T=1 + unlabelled + pseudo-labels (balanced), 3x epochs", 5,
        merge(UNLABELED, _kd(CWD, PSEUDO, BALANCE)), baseline="alone_x3", epochs_factor=3),
]
# Priority 6, strong perturbation: the images without labels CutMix-ed (distill.cutmix) with the teacher's cached
# outputs mixed alike; the recipe otherwise. Not a recipe candidate: it asks whether the small student takes more
# from the teacher on images it has never seen whole.
ARMS.append(Arm("rec_cwd_mix", "CWD T=1 + unlabelled, CutMix + pseudo-labels (balanced)", 6,
                merge(UNLABELED, _kd(CWD, PSEUDO, BALANCE, {"cutmix": {"prob": 0.5, "area": 0.5}}))))
# Priority 7, the teacher's head start: the benchmark's teacher saw the labels of the students' images without labels
# (teacher_labels.py: its pseudo-labels there score 0.906 mean foreground Dice, against 0.860 on the test split).
# A user's teacher has usually not. The recipe with a teacher trained on the student's labelled half only says what
# that head start is worth; its gap closed is still measured against the benchmark's teacher.
ARMS.append(Arm("rec_cwd_t50", "CWD T=1 + unlabelled + pseudo-labels (balanced), teacher on the labelled half only",
                7, merge(UNLABELED, _kd(CWD, PSEUDO, BALANCE)), teacher="labelled"))
ARM_BY_NAME = {a.name: a for a in ARMS}
#: Which part of the recipe pays: (the recipe, the recipe without one part, that part). Each row of the report's
#: "parts" table pairs the two arms seed by seed; its delta is what that part adds on top of the others.
RECIPE_PARTS = [
    ("rec_cwd", "pl_u", "the capped CWD term (beside the pseudo-labels on the images without labels)"),
    ("rec_cwd", "rec_cwd_nopl", "the teacher's pseudo-labels on the images without labels"),
    ("rec_cwd", "cwd_bal", "the images without labels, with their pseudo-labels"),
    ("rec_cwd", "rec_cwd_t50", "a teacher that saw the labels of the images without labels"),
]
#: Arms some other arm is compared with: they run the headline's seeds (``--headline-seeds``).
BASELINES = {a.baseline for a in ARMS}
