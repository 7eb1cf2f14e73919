"""Statistics and tables of the quality benchmark (see ``run.py``): ``raw.json`` -> ``results_<tag>.json`` / ``.md``.

The unit of a claim is the SEED: every arm's runs are paired with the student alone of the same seed (the same
50% of training patients). Per arm and student:

- ``mean +- std`` over seeds of the mean foreground Dice per test volume;
- ``seed test``: paired t-test over seeds of (arm - alone), with its 95% t interval and wins / losses;
- ``bootstrap``: hierarchical bootstrap over seeds and test volumes (95% interval of the mean difference);
- ``per-volume Wilcoxon``: paired signed-rank test over the 40 test volumes of the seed-averaged per-volume
  Dice (named as such: it ignores seed-to-seed spread, so it overstates significance);
- ``gap closed``: (arm - alone) / (teacher - alone), means over seeds.

``medkd recipe`` rows: the recipe arm chosen on the validation split (``run.py`` records the choice), and the
recipe with its fallback, which per seed keeps the distilled student only when its best validation Dice beats
the student alone's (so the recommended path is never worse than the student alone on validation).

``Which part of the recipe pays``: the recipe against each arm that drops one of its parts, with the same paired
statistics (seed t-test, bootstrap, per-volume Wilcoxon).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from medkd.evaluate.stats import hierarchical_bootstrap, paired_seed_test, paired_wilcoxon

#: The teachers trained per seed on that seed's labelled patients only (``run.py``'s ``teacher_half-s<seed>``).
HALF_TEACHER = re.compile(r"^teacher_half-s(?P<seed>\d+)$")
RUN_NAME = re.compile(r"^(?P<student>.+)-(?P<arm>[a-z0-9_]+)-s(?P<seed>\d+)(?:@(?P<device>[a-z0-9_]+))?$")


def _arms_by_student(runs: dict[str, Any]) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """student -> arm -> seed -> run record. A run repeated on another device (``<run>@<device>``, named so by
    ``run.py merge``) goes under the arm ``<arm>@<device>``."""
    out: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for name, rec in runs.items():
        m = RUN_NAME.match(name)
        if m:
            arm = m["arm"] if m["device"] is None else f"{m['arm']}@{m['device']}"
            out.setdefault(m["student"], {}).setdefault(arm, {})[int(m["seed"])] = rec
    return out


def same_device_baseline(arm: dict[int, dict[str, Any]], arms: dict[str, dict[int, dict[str, Any]]],
                         baseline: str) -> dict[int, dict[str, Any]]:
    """Per seed of ``arm``, the ``baseline`` run of that seed, taken from the baseline's repeat on the arm's
    device (``<baseline>@<device>``) where the baseline's own run ran on another device and that repeat exists."""
    own = arms.get(baseline, {})
    paired = {}
    for seed, rec in arm.items():
        base = own.get(seed)
        twin = arms.get(f"{baseline}@{rec.get('device')}", {}).get(seed)
        if twin is not None and (base is None or base.get("device") != rec.get("device")):
            base = twin
        if base is not None:
            paired[seed] = base
    return paired


def _seed_means(arm: dict[int, dict[str, Any]]) -> dict[int, float]:
    return {s: float(np.mean(list(r["test_dice"].values()))) for s, r in arm.items()}


def _volume_means(arm: dict[int, dict[str, Any]], seeds: list[int]) -> dict[str, float]:
    cases = sorted(set.intersection(*(set(arm[s]["test_dice"]) for s in seeds))) if seeds else []
    return {c: float(np.mean([arm[s]["test_dice"][c] for s in seeds])) for c in cases}


def compare(arm: dict[int, dict[str, Any]], alone: dict[int, dict[str, Any]], teacher: float | None
            ) -> dict[str, Any]:
    """All statistics of one arm against the student alone (seeds both have)."""
    seeds = sorted(set(arm) & set(alone))
    means = _seed_means(arm)
    vals = list(means.values())
    alone_means = _seed_means({s: alone[s] for s in seeds})
    row: dict[str, Any] = {
        "seeds": sorted(arm), "per_seed": {str(s): means[s] for s in sorted(means)},
        "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        "best_val_dice": {str(s): arm[s]["best_val_dice"] for s in sorted(arm)},
        "val_collapse": [s for s in sorted(arm) if arm[s].get("val_collapse")],
        "devices": {str(s): arm[s].get("device") for s in sorted(arm)},
        "baseline_devices": {str(s): alone[s].get("device") for s in seeds},
    }
    if arm is alone or not seeds:
        return row
    row["seed_test"] = paired_seed_test({s: means[s] for s in seeds}, alone_means)
    row["bootstrap"] = hierarchical_bootstrap({s: arm[s]["test_dice"] for s in seeds},
                                              {s: alone[s]["test_dice"] for s in seeds})
    w = paired_wilcoxon(_volume_means(arm, seeds), _volume_means(alone, seeds))
    row["volume_wilcoxon"] = {k: w[k] for k in ("n", "delta", "p", "reason")}
    alone_mean = float(np.mean(list(alone_means.values())))
    if teacher is not None and teacher > alone_mean:
        row["gap_closed"] = (float(np.mean([means[s] for s in seeds])) - alone_mean) / (teacher - alone_mean)
    return row


def with_fallback(arm: dict[int, dict[str, Any]], alone: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per seed, the distilled run if its best validation Dice beats the student alone's, else the alone run."""
    out = {}
    for s in sorted(set(arm) & set(alone)):
        a, b = arm[s].get("best_val_dice"), alone[s].get("best_val_dice")
        out[s] = {**(arm[s] if a is not None and (b is None or a > b) else alone[s]),
                  "fallback": not (a is not None and (b is None or a > b))}
    return out


def choose_recipe(best_val: dict[str, float | None], candidates: list[str], students: list[str],
                  seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any] | None:
    """The recipe, chosen on the VALIDATION split: the candidate arm with the highest mean best-validation Dice
    over ``seeds`` of every student (one recipe for all students). Only candidates with all those runs finished
    compete; None when none has."""
    scores = {}
    for arm in candidates:
        vals = [best_val.get(f"{st}-{arm}-s{s}") for st in students for s in seeds]
        if all(v is not None for v in vals):
            scores[arm] = float(np.mean(vals))
    if not scores:
        return None
    incomplete = [a for a in candidates if a not in scores]
    return {"chosen": max(scores, key=scores.get), "mean_val_dice": scores, "incomplete": incomplete,
            "rule": f"highest mean best-validation Dice over seeds {list(seeds)} of {', '.join(students)}"}


def build(raw: dict[str, Any], candidates: list[str], arm_order: list[str],
          baselines: dict[str, str] | None = None, fallback_arms: tuple[str, ...] = (),
          parts: tuple[tuple[str, str, str], ...] = ()) -> dict[str, Any]:
    """The tables' numbers: per student, each arm against its baseline arm (``baselines``, default ``alone``); the
    chosen recipe with its fallback (row ``recipe``), and so each of ``fallback_arms`` (row ``fallback:<arm>``);
    and, per ``(full, without, part)`` of ``parts``, what that part adds (``full`` against ``without``)."""
    baselines = baselines or {}
    runs = raw["runs"]
    teacher = runs.get("teacher")
    teacher_dice = float(np.mean(list(teacher["test_dice"].values()))) if teacher else None
    result: dict[str, Any] = {"teacher": {"test_dice": teacher_dice,
                                          "best_val_dice": teacher["best_val_dice"] if teacher else None},
                              "students": {}, "schedule": raw.get("schedule"), "machine": raw.get("machine")}
    result["teacher_half"] = {int(m["seed"]): float(np.mean(list(rec["test_dice"].values())))
                              for name, rec in runs.items() if (m := HALF_TEACHER.match(name))}
    by_student = _arms_by_student(runs)
    choice = choose_recipe({n: r.get("best_val_dice") for n, r in runs.items()}, candidates, sorted(by_student))
    result["recipe_choice"] = choice
    for student, arms in sorted(by_student.items()):
        rows: dict[str, Any] = {}
        for name in arm_order:
            rows[name] = _row(arms, name, baselines.get(name, "alone"), teacher_dice)
            for repeat in sorted(a for a in arms if a.startswith(f"{name}@")):  # the device effect
                rows[repeat] = {**compare(arms[repeat], arms[name], None), "baseline": name}
        for name in fallback_arms:
            if name in arms:
                rows[f"fallback:{name}"] = _fallback_row(arms, name, teacher_dice)
        if choice is not None and choice["chosen"] in arms:
            rows["recipe"] = _fallback_row(arms, choice["chosen"], teacher_dice)
        result["students"][student] = {"rows": rows, "parts": [_part_row(arms, *part) for part in parts]}
    return result


def _part_row(arms: dict[str, dict[int, dict[str, Any]]], full: str, without: str, part: str) -> dict[str, Any]:
    """What ``part`` adds: ``full`` against ``without`` on the seeds both ran, each paired on one device where the
    runs allow (``<without>@<device>``)."""
    row: dict[str, Any] = {"full": full, "without": without, "part": part}
    paired = same_device_baseline(arms.get(full, {}), arms, without)
    if not paired:
        return {**row, "seeds": [], "not_run": True}
    stats = compare({s: arms[full][s] for s in paired}, paired, None)
    return {**row, **stats, "without_mean": float(np.mean(list(_seed_means(paired).values())))}


def _fallback_row(arms: dict[str, dict[int, dict[str, Any]]], name: str, teacher: float | None) -> dict[str, Any]:
    """An arm as ``medkd recipe`` ships it: per seed, the distilled run or, where it lost on validation, the alone."""
    alone = same_device_baseline(arms[name], arms, "alone")
    fb = with_fallback(arms[name], alone)
    return {**compare(fb, alone, teacher), "arm": name, "fallback_seeds": [s for s, r in fb.items() if r["fallback"]]}


def _row(arms: dict[str, dict[int, dict[str, Any]]], name: str, baseline: str, teacher: float | None
         ) -> dict[str, Any]:
    """One arm's row: its statistics against its baseline, each seed paired on the same device where it can be."""
    if name not in arms:
        return {"seeds": [], "not_run": True}
    paired = arms[name] if name == baseline else same_device_baseline(arms[name], arms, baseline)
    return {**compare(arms[name], paired, teacher), "baseline": baseline}


def _fmt(x: float | None, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _p(p: float | None) -> str:
    return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _by_device(devices: dict[str, str | None]) -> dict[str, list[str]]:
    by_device: dict[str, list[str]] = {}
    for seed, device in devices.items():
        by_device.setdefault(device or "unknown", []).append(seed)
    return by_device


def _seeds_text(by_device: dict[str, list[str]]) -> str:
    return "; ".join(f"{d}: seeds {', '.join(s)}" for d, s in by_device.items())


def _devices_note(devices: dict[str, str | None], baseline_devices: dict[str, str | None] | None = None,
                  baseline: str = "alone") -> str:
    """`` [cuda: seeds 0, 1, 2; cpu: seeds 3, 4]`` where an arm's seeds ran on more than one kind of device, and
    ``; paired alone on cuda: seeds 3, 4`` where a seed's baseline run (``baseline`` names it) ran on another device
    than the arm's."""
    by_device = _by_device(devices)
    moved = {s: d for s, d in (baseline_devices or {}).items() if d != devices.get(s)}
    if len(by_device) < 2 and not moved:
        return ""
    note = _seeds_text(by_device)
    if moved:
        note += f"; paired {baseline} on {_seeds_text(_by_device(moved))}"
    return f" [{note}]"


def machines_line(raw: dict[str, Any]) -> str:
    """Where the runs ran: one machine, or each merged file's machine with its number of runs."""
    def name(m: dict[str, Any]) -> str:
        return m.get("gpu") or m.get("cpu", "unknown")

    if "machines" not in raw:
        machine = raw.get("machine", {})
        return f"Machine: {name(machine)}; {machine.get('note', '')}"
    parts = [f"{name(m)} ({len(m['runs'])} runs; {m.get('note', '')})" for m in raw["machines"]]
    return ("Machines: " + "; ".join(parts) + ". Per arm, a bracket names the device of each seed where they differ, "
            "and that of the student-alone runs it is paired with where those ran elsewhere.")


def _label(name: str, labels: dict[str, str]) -> str:
    """An arm's label; a repeat on another device (``<arm>@<device>``) says what it measures."""
    arm, _, device = name.partition("@")
    if not device:
        return labels.get(name, name)
    return f"{labels.get(arm, arm)}, the same seeds again on the {device} (Δ: the device effect)"


def render(result: dict[str, Any], labels: dict[str, str]) -> str:
    t = result["teacher"]
    lines = [f"Teacher (monai.UNet 16..256, 2 residual units, 1.6 M, 100% of training patients): test Dice "
             f"{_fmt(t['test_dice'])} (best validation {_fmt(t['best_val_dice'])}).", ""]
    if result.get("teacher_half"):
        per_seed = ", ".join(f"seed {s} {v:.3f}" for s, v in sorted(result["teacher_half"].items()))
        lines += [f"The same teacher trained on each seed's labelled patients only (50%), test Dice: {per_seed}.", ""]
    choice = result.get("recipe_choice")
    if choice:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in choice["mean_val_dice"].items())
        lines += [f"Recipe chosen on the validation split ({choice['rule']}): **{choice['chosen']}** ({scores}; "
                  f"not compared, runs missing: {', '.join(choice['incomplete']) or 'none'}).", ""]
    for student, block in result["students"].items():
        lines += [f"### {student}", "",
                  "| arm | seeds | test Dice mean ± std | Δ vs alone, same schedule (seed-paired) | "
                  "seed t-test p [95% CI] | wins | hier. bootstrap 95% CI | per-volume Wilcoxon p | gap closed |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, row in block["rows"].items():
            if row.get("not_run"):
                lines.append(f"| {labels.get(name, name)} | 0 | not run (see the README: What ran) | | | | | | |")
                continue
            label = _label(name, labels)
            if "@" not in name and row.get("baseline", "alone") != "alone":
                label += f" (vs {labels.get(row['baseline'], row['baseline'])})"
            if name == "recipe" or name.startswith("fallback:"):
                head = "**medkd recipe**" if name == "recipe" else "medkd recipe's fallback applied"
                label = f"{head} ({labels.get(row['arm'], row['arm'])}, with fallback; fell back on " \
                        f"seeds {row['fallback_seeds'] or 'none'})"
            label += _devices_note(row.get("devices", {}), row.get("baseline_devices"))
            lines.append(f"| {label} | {len(row['seeds'])} | {_fmt(row['mean'])} ± {_fmt(row['std'])} | "
                         f"{_stat_cells(row)} | {_fmt(row.get('gap_closed'), 2)} |")
        lines.append("")
        lines += _render_parts(student, block.get("parts", []), labels)
    return "\n".join(lines)


def _stat_cells(row: dict[str, Any]) -> str:
    """The paired columns of a row: Δ | seed t-test p [95% CI] | wins | hierarchical bootstrap | Wilcoxon p."""
    st, bs, wv = row.get("seed_test", {}), row.get("bootstrap", {}), row.get("volume_wilcoxon", {})
    ci, bci = st.get("ci95"), bs.get("ci95")
    ci_txt = f"{_p(st.get('p'))} [{_fmt(ci[0], signed=True)}, {_fmt(ci[1], signed=True)}]" if ci else _p(st.get("p"))
    bci_txt = f"[{_fmt(bci[0], signed=True)}, {_fmt(bci[1], signed=True)}]" if bci else "-"
    return (f"{_fmt(st.get('delta'), signed=True)} | {ci_txt} | {st.get('wins', '-')}/{st.get('n', '-')} | "
            f"{bci_txt} | {_p(wv.get('p'))}")


def _render_parts(student: str, parts: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """The table of what each part of the recipe adds (the recipe against the recipe without that part)."""
    if not parts:
        return []
    recipe = ", ".join(sorted({f"`{row['full']}`" for row in parts}))
    lines = [f"Which part of the recipe pays ({student}): the recipe ({recipe}) against the recipe without one part, "
             "seed by seed (Δ: what that part adds on top of the others).", "",
             "| part | without it (arm) | seeds | recipe | without it | Δ (seed-paired) | seed t-test p [95% CI] | "
             "wins | hier. bootstrap 95% CI | per-volume Wilcoxon p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in parts:
        arm = labels.get(row["without"], row["without"])
        if row.get("not_run"):
            lines.append(f"| {row['part']} | {arm} | 0 | not run (see the README: What ran) | | | | | | |")
            continue
        note = _devices_note(row["devices"], row["baseline_devices"], f"'{row['without']}'")
        lines.append(f"| {row['part']}{note} | {arm} | {len(row['seeds'])} | {_fmt(row['mean'])} | "
                     f"{_fmt(row['without_mean'])} | {_stat_cells(row)} |")
    return lines + [""]


def build_benchmark(raw: dict[str, Any]) -> dict[str, Any]:
    """:func:`build` with the benchmark's arms (``arms.py``): candidates, order, baselines, fallback rows and the
    recipe's parts."""
    from arms import ARMS, RECIPE_PARTS  # benchmarks/quality/arms.py

    return build(raw, [a.name for a in ARMS if a.candidate], [a.name for a in ARMS],
                 {a.name: a.baseline for a in ARMS}, tuple(a.name for a in ARMS if a.fallback), tuple(RECIPE_PARTS))


def write_report(raw_file: Path, out_dir: Path, tag: str | None = None) -> dict[str, Any]:
    from arms import ARM_BY_NAME  # benchmarks/quality/arms.py

    raw = json.loads(Path(raw_file).read_text())
    result = build_benchmark(raw)
    tag = tag or Path(raw_file).stem
    labels = {name: arm.label for name, arm in ARM_BY_NAME.items()}
    (out_dir / f"results_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    head = f"# Quality benchmark: {tag}\n\n{machines_line(raw)}\n\n"
    (out_dir / f"results_{tag}.md").write_text(head + render(result, labels))
    print(head + render(result, labels))
    return result
