"""Benchmark every distillation term: forward + backward time and peak memory on the CPU.

Each (term, shape) runs in its own subprocess. Memory is reported two ways: the growth of the process's peak resident
set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) across the full-size forward + backward passes (measured
after the inputs exist, the term is set up and one small-input pass has done any lazy initialisation), and the exact
size of the tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``). Time is the median
wall time of the repeats after one warm-up; every term is measured in ``--passes`` independent passes (the CPU may be
shared) and the pass with the lowest median is reported, with all pass medians kept in the JSON.

Shapes (``--scale full``, the default):

- 2D: logits ``16 x 4 x 256 x 256`` (student and teacher); features at 1/8 resolution, student ``16 x 32 x 32 x 32``,
  teacher ``16 x 64 x 32 x 32``; label ``16 x 1 x 256 x 256``.
- 3D: logits ``2 x 4 x 64 x 64 x 64``; features student ``2 x 32 x 8 x 8 x 8``, teacher ``2 x 64 x 8 x 8 x 8``; label
  ``2 x 1 x 64 x 64 x 64``.

Feature terms read the ``bottleneck`` tap (the student's 32 channels pass the 1x1 conv adapter where the term has
one); ``attention_map`` / ``region_affinity`` / ``contrastive`` read the same 1/8-resolution tensors.

Usage::

    python benchmarks/losses/run.py                # writes losses_cpu.json and losses_cpu.md beside this file
    python benchmarks/losses/run.py --scale tiny   # smoke test (small shapes), writes nothing unless --out-dir
    python benchmarks/losses/run.py --terms contrastive_image --merge   # re-measure rows, keep the others
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from medkd.distill.losses import create_loss
from medkd.io import atomic_write_json, atomic_write_text
from medkd.measure.machine import machine_info as measure_machine_info
from medkd.measure.machine import utc_now
from medkd.measure.memory import rusage_peak_mib
from medkd.measure.tables import markdown_table
from medkd.measure.timing import summarize, time_ms

HERE = Path(__file__).resolve().parent

# name -> (registered loss, options)
TERMS: dict[str, tuple[str, dict]] = {
    "logits_kl": ("logits_kl", {"temperature": 4.0}),
    "affinity": ("affinity", {}),
    "adaptive_affinity": ("adaptive_affinity", {"dilations": [1, 2, 3]}),
    "kernel_matrix": ("kernel_matrix", {}),
    "contrastive_image": ("contrastive", {"tap": "bottleneck"}),
    "contrastive_pixel": ("contrastive", {"tap": "bottleneck", "mode": "pixel", "max_anchors": 1024}),
    "feature_mse": ("feature_mse", {}),
    "kdnet_soft_label": ("kdnet_soft_label", {}),
    "bottleneck_kl": ("bottleneck_kl", {}),
    "attention_map": ("attention_map", {"tap": "bottleneck"}),
    "region_affinity": ("region_affinity", {"tap": "bottleneck"}),
}

SHAPES = {
    "full": {"2d": (16, (256, 256)), "3d": (2, (64, 64, 64))},
    "tiny": {"2d": (2, (32, 32)), "3d": (1, (16, 16, 16))},
}
CLASSES, STUDENT_CH, TEACHER_CH, REDUCTION = 4, 32, 64, 8


def make_inputs(batch: int, spatial: tuple[int, ...]):
    """Random tapped dicts and a batch with a label map, at the documented shapes."""
    feat_sp = tuple(max(1, s // REDUCTION) for s in spatial)
    student = {
        "logits": torch.randn(batch, CLASSES, *spatial, requires_grad=True),
        "bottleneck": torch.randn(batch, STUDENT_CH, *feat_sp, requires_grad=True),
    }
    teacher = {
        "logits": torch.randn(batch, CLASSES, *spatial),
        "bottleneck": torch.randn(batch, TEACHER_CH, *feat_sp),
    }
    return student, teacher, {"label": torch.randint(0, CLASSES, (batch, 1, *spatial))}


def saved_for_backward_mib(loss, student, teacher, batch) -> float:
    """Exact size of the tensors autograd keeps for backward (unique storages, inputs excluded)."""
    inputs = {t.untyped_storage().data_ptr() for d in (student, teacher, batch) for t in d.values()}
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in inputs:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = loss(student, teacher, batch)
    del value
    return sum(saved.values()) / 2**20


def worker(term: str, dim: str, scale: str, repeats: int, budget_s: float) -> dict:
    """Run one term in this process and return its measurements."""
    torch.manual_seed(0)
    batch, spatial = SHAPES[scale][dim]
    student, teacher, label = make_inputs(batch, spatial)
    name, options = TERMS[term]
    loss = create_loss(name, **options)
    loss.setup(student, teacher)
    params = list(loss.parameters())

    def clear_grads() -> None:
        for x in list(student.values()) + params:
            x.grad = None

    def step() -> None:
        loss(student, teacher, label).backward()

    # one pass on small inputs first, so one-time lazy initialisation is not counted as the term's memory
    loss(*make_inputs(2, tuple(8 * max(1, s // 16) for s in spatial))).backward()
    rss_before = rusage_peak_mib()
    warm = time_ms(step, 1, before=clear_grads)[0] / 1e3
    n = max(1, min(repeats, int(budget_s / max(warm, 1e-6))))
    stats = summarize([t / 1e3 for t in time_ms(step, n, before=clear_grads)])
    peak = rusage_peak_mib() - rss_before
    return {
        "term": term,
        "loss": name,
        "options": options,
        "dim": dim,
        "student_shapes": {k: list(v.shape) for k, v in student.items()},
        "teacher_shapes": {k: list(v.shape) for k, v in teacher.items()},
        "taps": {"student": list(loss.student_taps), "teacher": list(loss.teacher_taps)},
        "extra_params": sum(p.numel() for p in params),
        "warmup_s": warm,
        "repeats": n,
        "median_s": stats["median"],
        "min_s": stats["min"],
        "peak_rss_delta_mib": round(peak, 1),
        "saved_for_backward_mib": round(saved_for_backward_mib(loss, student, teacher, label), 1),
    }


def machine_info() -> dict:
    """The fields of :func:`medkd.measure.machine_info` this benchmark records, and a note on the shared CPU."""
    m = measure_machine_info()
    return {
        "platform": m["platform"],
        "python": m["python"],
        "torch": m["torch"],
        "cpu": m["cpu"],
        "cpu_count": m["logical_cores"],
        "torch_threads": m["torch_threads"],
        "note": "CPU shared with other concurrent jobs while measuring: times are indicative, not isolated",
    }


def render_md(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Distillation losses: CPU forward + backward",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores, torch {m['torch']}, {m['torch_threads']} threads), "
        f"{m['platform']}. {m['note']}.",
        "",
        f"Memory: {result['memory_method']}",
        "",
        "Shapes: " + result["shapes_note"],
        "",
    ]
    head = ["term", "dim", "median fwd+bwd (ms)", "min (ms)", "repeats", "peak RSS growth (MiB)",
            "saved for backward (MiB)", "extra params"]
    lines += markdown_table(head, [_cells(r) for r in result["results"]], "ll" + "r" * 6)
    later = [f"{r['term']} {r['dim']} ({r['measured_utc'][:10]})" for r in result["results"] if "measured_utc" in r]
    if later:
        lines += ["", "Re-measured later with `--merge` (same machine kind, date): " + ", ".join(later) + "."]
    return "\n".join(lines) + "\n"


def merge_results(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows with each (term, dim) that ``new`` measured replaced in place; new pairs appended."""
    fresh = {(r["term"], r["dim"]): r for r in new}
    merged = [fresh.pop((r["term"], r["dim"]), r) for r in old]
    return merged + list(fresh.values())


def _cells(r: dict) -> list:
    """One table row of :func:`render_md` (an error fills the third cell)."""
    if "error" in r:
        return [r["term"], r["dim"], f"error: {r['error']}"] + [""] * 5
    return [r["term"], r["dim"], f"{1000 * r['median_s']:.1f}", f"{1000 * r['min_s']:.1f}", r["repeats"],
            f"{r['peak_rss_delta_mib']:.1f}", f"{r['saved_for_backward_mib']:.1f}", r["extra_params"]]


def _run_passes(args: argparse.Namespace) -> list[dict]:
    """Every (dim, term) in ``args.passes`` passes, one subprocess each; the pass with the lowest median per term."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for p in range(args.passes):
        for dim in args.dims:
            for term in args.terms:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", term, dim, "--scale", args.scale,
                       "--repeats", str(args.repeats), "--budget", str(args.budget)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    r = {"term": term, "dim": dim, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
                else:
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.setdefault((dim, term), []).append(r)
                msg = r.get("error") or f"{1000 * r['median_s']:.1f} ms, {r['peak_rss_delta_mib']:.1f} MiB"
                print(f"pass {p + 1} {dim} {term:20s} {msg}", flush=True)
    results = []
    for passes in runs.values():
        ok = [r for r in passes if "error" not in r]
        if not ok:
            results.append(passes[0])
            continue
        best = dict(min(ok, key=lambda r: r["median_s"]))
        best["pass_medians_s"] = [r["median_s"] for r in ok]
        results.append(best)
    return results


def _previous_result(parser: argparse.ArgumentParser, out_dir: Path | None, scale: str, machine: dict) -> dict:
    """The result ``--merge`` updates; an error unless it is there, at ``scale``, from the same CPU, cores, torch."""
    if out_dir is None or not (out_dir / "losses_cpu.json").is_file():
        parser.error("--merge needs losses_cpu.json in the output folder")
    previous = json.loads((out_dir / "losses_cpu.json").read_text())
    was = previous["machine"]
    if (was["cpu"], was["cpu_count"], was["torch"]) != (machine["cpu"], machine["cpu_count"], machine["torch"]):
        parser.error(f"--merge: losses_cpu.json was measured on {was['cpu']} ({was['cpu_count']} cores, torch "
                     f"{was['torch']}), not this machine: re-measure every row instead")
    if previous["scale"] != scale:
        parser.error(f"--merge: losses_cpu.json holds scale {previous['scale']!r}, not {scale!r}")
    return previous


def _payload(scale: str, machine: dict, results: list[dict]) -> dict:
    """The JSON this benchmark writes: machine, shapes, methods and one row per (term, dim)."""
    b2, s2 = SHAPES[scale]["2d"]
    b3, s3 = SHAPES[scale]["3d"]
    f2 = "x".join(str(max(1, s // REDUCTION)) for s in s2)
    f3 = "x".join(str(max(1, s // REDUCTION)) for s in s3)
    return {
        "machine": machine,
        "scale": scale,
        "shapes_note": (
            f"2D logits {b2}x{CLASSES}x{'x'.join(map(str, s2))}, features student {b2}x{STUDENT_CH}x{f2} / teacher "
            f"{b2}x{TEACHER_CH}x{f2}; 3D logits {b3}x{CLASSES}x{'x'.join(map(str, s3))}, features student "
            f"{b3}x{STUDENT_CH}x{f3} / teacher {b3}x{TEACHER_CH}x{f3} (1/{REDUCTION} resolution, 'bottleneck' tap)"
        ),
        "memory_method": (
            "(1) peak RSS growth: growth of the peak resident set size (resource.getrusage ru_maxrss) of a fresh "
            "subprocess per term, from after input creation, setup and one small-input pass (lazy init) to after "
            "the full-size forward+backward passes; includes temporaries and allocator overhead. "
            "(2) saved for backward: exact bytes of the tensors autograd keeps between forward and backward "
            "(torch.autograd.graph.saved_tensors_hooks, unique storages, input tensors excluded)"
        ),
        "timing_method": "median wall time (time.perf_counter) of forward+backward after one warm-up pass; "
        "repeats reduced when one pass is slow (budget per term); each term is measured in several independent "
        "passes (fresh subprocess each, passes minutes apart) and the pass with the lowest median is reported, "
        "all pass medians are kept in pass_medians_s",
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SHAPES), default="full")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=40.0, help="seconds of timed repeats per term at most")
    parser.add_argument("--passes", type=int, default=2, help="independent passes; the lowest median is kept")
    parser.add_argument("--terms", nargs="*", default=list(TERMS), choices=list(TERMS))
    parser.add_argument("--dims", nargs="*", default=["2d", "3d"], choices=["2d", "3d"])
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--merge", action="store_true",
                        help="replace only the measured rows of the JSON already in the output folder")
    parser.add_argument("--worker", nargs=2, metavar=("TERM", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.scale, args.repeats, args.budget)))
        return

    out_dir = args.out_dir or (HERE if args.scale == "full" else None)
    machine = machine_info()
    previous = _previous_result(parser, out_dir, args.scale, machine) if args.merge else None
    results = _run_passes(args)
    if previous is not None:
        machine, stamp = previous["machine"], utc_now()
        results = merge_results(previous["results"], [{**r, "measured_utc": stamp} for r in results])
    result = _payload(args.scale, machine, results)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "losses_cpu.json", result)
        atomic_write_text(out_dir / "losses_cpu.md", render_md(result))
        print(f"wrote {out_dir / 'losses_cpu.json'} and {out_dir / 'losses_cpu.md'}")


if __name__ == "__main__":
    main()
