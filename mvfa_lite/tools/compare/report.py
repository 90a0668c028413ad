"""What compare-official reports: the speed figures (rates against the measured GEMM peak on
a CPU, the ratios of the two programs) and the text table the command prints."""
from __future__ import annotations

import textwrap

from .agreement import EXACT_STEPS, ROUNDING_FACTOR, STEP_TOLERANCE


def speed_report(official: dict, ours: dict, peak: dict | None, precisions: dict,
                 recipe: str) -> dict:
    """Seconds (timed runs) and FLOP (counted runs) of each program -> rates and ratios.
    ``peak``: this CPU's matrix-multiply rates (``bench.gemm_peak``), None on a GPU, where the
    fractions of peak and the CPU targets are left out. ``precisions``: the arithmetic of
    each program, ``{"official": ..., "ours": ...}``."""
    def program(run: dict, dtype: str) -> dict:
        forward, backward = run["flops"]["forward"], run["flops"]["backward"]
        total = forward + backward
        rate, per_cpu_second = total / run["wall_s"] / 1e9, total / run["cpu_s"] / 1e9
        row = {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "precision": dtype,
               "load_average": run["load_average"],
               "gflop_forward": forward / 1e9, "gflop_backward": backward / 1e9,
               "gflop": total / 1e9, "gflop_per_s": rate, "gflop_per_cpu_s": per_cpu_second,
               "phases_s": run["phases_s"]}
        if peak is not None:
            row["fraction_of_peak"] = rate / peak[dtype]
            row["fraction_of_core_peak"] = per_cpu_second / (peak[dtype] / peak["threads"])
        return row
    result = {"recipe": recipe, "gemm_peak_gflop_per_s": peak,
              "official": program(official, precisions["official"]),
              "ours": program(ours, precisions["ours"])}
    o, m = result["official"], result["ours"]
    result["ratios"] = {"wall": o["wall_s"] / m["wall_s"], "cpu": o["cpu_s"] / m["cpu_s"],
                        "work": o["gflop"] / m["gflop"]}
    if peak is not None:
        result["targets"] = {
            "ours_at_least_70_percent_of_peak": m["fraction_of_peak"] >= 0.7,
            "cpu_ratio_at_least_work_ratio": result["ratios"]["cpu"] >= result["ratios"]["work"]}
    return result


# --- the report ----------------------------------------------------------------------------------
def _mark(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def format_report(report: dict) -> str:
    """The report as the text table the command prints."""
    m = report["machine"]
    units = f" ({', '.join(m['matrix_units'])})" if m.get("matrix_units") else ""
    lines = [f"compare-official: {report['official_dir']}",
             f"model {report['model']}, weights: {report['weights']}",
             f"machine: {m['cpu']}{units}, {m['threads']} threads, torch {m['torch']}; " + (
                 f"on {m['gpu']}: the official code in its fp16 autocast, mvfa-lite in fp32 "
                 "for scores and training" if report.get("device") == "cuda"
                 else "both programs in fp32 for scores and training"), ""]
    if "scoring" in report:
        lines += _scoring_lines(report)
    if "training" in report:
        lines += _training_lines(report["training"])
    if "speed" in report:
        lines += _speed_lines(report["speed"])
    if "checkpoint" in report:
        lines += _checkpoint_lines(report["checkpoint"])
    lines += ["", f"overall: {_mark(report['passed'])} (scores, losses, training, checkpoint; "
              f"{report['seconds']:.0f} s)"]
    return "\n".join(_wrapped(line) for line in lines)


def _wrapped(line: str, width: int = 96) -> str:
    """A long line folded at ``width``, its continuation indented under it."""
    line = line.rstrip()
    if len(line) <= width:
        return line
    indent = " " * (len(line) - len(line.lstrip()) + 4)
    return "\n".join(textwrap.wrap(line, width, subsequent_indent=indent,
                                   break_on_hyphens=False))


def _scoring_lines(report: dict) -> list[str]:
    lines = [f"scoring, untrained adapters (the official initialisation, seed "
             f"{report['init_seed']}), paper protocol, k = {report['shots']}",
             f"  {'protocol':<24}{'scores':<7}{'Pearson':>10}{'max |diff|':>12}"
             f"{'AUROC official':>16}{'AUROC ours':>12}{'|dAUROC|':>10}"]
    for key, entry in report["scoring"].items():
        name = f"{'segmentation' if key == 'Brain' else 'classification'} ({key})"
        for part in ("image", "pixel"):
            if part in entry:
                p = entry[part]
                lines.append(f"  {name if part == 'image' else '':<24}{part:<7}"
                             f"{p['pearson']:>10.6f}{p['max_abs_diff']:>12.2e}"
                             f"{p['auroc_official']:>16.6f}{p['auroc_ours']:>12.6f}"
                             f"{p['auroc_diff']:>10.1e}")
        lines.append(f"  {'':<24}text features max |diff| {entry['text_max_abs_diff']:.1e}, "
                     f"{entry['test_images']} test images: {_mark(entry['passed'])}")
    losses = report["losses"]
    lines.append(f"  losses on fixed inputs (official vs ours): focal "
                 f"{losses['focal']['official']:.7f} vs {losses['focal']['ours']:.7f}, dice "
                 f"{losses['dice']['official']:.7f} vs {losses['dice']['ours']:.7f}: "
                 f"{_mark(losses['passed'])}")
    return lines


def _checkpoint_lines(report: dict) -> list[str]:
    lines = ["", "checkpoint: the official .pth saved by train_few.py, scored by the official "
             "test script and by mvfa-lite evaluate (pass: Pearson >= 0.99999, "
             "|dAUROC| <= 1e-6)",
             f"  {'setting':<11}{'scores':<7}{'Pearson':>11}{'max |diff|':>12}"
             f"{'AUROC official':>16}{'AUROC ours':>12}{'|dAUROC|':>10}"]
    for key, c in report["sets"].items():
        lines.append(f"  {key} ({c['test_images']} test images)")
        for setting in ("few-shot", "zero-shot"):
            for part in ("image", "pixel"):
                if part in c.get(setting, {}):
                    p = c[setting][part]
                    lines.append(f"  {setting if part == 'image' else '':<11}{part:<7}"
                                 f"{p['pearson']:>11.8f}{p['max_abs_diff']:>12.2e}"
                                 f"{p['auroc_official']:>16.6f}{p['auroc_ours']:>12.6f}"
                                 f"{p['auroc_diff']:>10.2e}  {_mark(p['passed'])}")
    if any("zero-shot" in c for c in report["sets"].values()):
        lines.append("  (test_zero.py min-max normalises its image scores over the test set and "
                     "mvfa-lite does not: Pearson and AUROC compare them, max |diff| shows it)")
    return lines + [f"  checkpoint: {_mark(report['passed'])}"]


def _training_lines(t: dict) -> list[str]:
    lines = ["", f"training: one epoch at batch 1, mvfa-lite given the official run's "
             f"initialisation and data order ({t['official_steps']} official steps)"]
    if not t["order_reproduced"]:
        return lines + [f"  order not reproduced: {t['reason']}: FAIL"]
    o, y = t["step_losses"], t["rounding_yardstick"]
    rows = [("steps", t["official_steps"], t["ours_steps"]),
            (f"loss, first {EXACT_STEPS} steps max |diff|",
             f"{o['first_steps_max_abs_diff']:.1e}", f"{y['first_steps_max_abs_diff']:.1e}"),
            ("first step differing > 1e-4", o["first_step_over_1e-4"], y["first_step_over_1e-4"]),
            ("loss per step median |diff|", f"{o['median_abs_diff']:.2e}",
             f"{y['median_abs_diff']:.2e}"),
            ("loss per step max |diff|", f"{o['max_abs_diff']:.2e}", f"{y['max_abs_diff']:.2e}"),
            ("loss per step Pearson", f"{o['pearson']:.6f}", f"{y['pearson']:.6f}"),
            ("adapters after, max |diff|", f"{t['adapters_max_abs_diff']:.2e}",
             f"{t['yardstick_adapters_max_abs_diff']:.2e}"),
            ("adapters after, gap / update", f"{t['adapters_relative_diff']:.1%}",
             f"{t['yardstick_adapters_relative_diff']:.1%}")]
    lines.append(f"  {'':<32}{'official vs ours':>18}{'ours vs ours+1ulp':>19}")
    lines += [f"  {name:<32}{str(a):>18}{str(b):>19}" for name, a, b in rows]
    lines += [f"  AUROC after the epoch, {part}: official {a:.4f}, ours {b:.4f}, ours+1ulp {c:.4f}"
              for part, (a, b, c) in t["auroc_after_epoch"].items()]
    return lines + [
        f"  first {EXACT_STEPS} steps within {STEP_TOLERANCE:g}, median |diff| within "
        f"{ROUNDING_FACTOR:g}x the one-ulp yardstick: {_mark(t['passed'])}"]


def _speed_lines(s: dict) -> list[str]:
    if s.get("measured") is False:
        return ["", f"speed: not measured: {s['reason']}"]
    peak = s["gemm_peak_gflop_per_s"]
    o, ours, r = s["official"], s["ours"], s["ratios"]
    lines = ["", f"speed: {s['recipe']}"]
    if peak is not None:
        lines.append("  GEMM peak measured in this run: " + ", ".join(
            f"{name} {value:.0f} GFLOP/s" for name, value in peak.items()
            if name != "threads") + f" ({peak['threads']} threads)")
    lines.append(f"  {'':<24}{'official':>12}{'mvfa-lite':>12}{'ratio':>8}")
    rows = [("precision", o["precision"], ours["precision"], ""),
            ("wall seconds", f"{o['wall_s']:.1f}", f"{ours['wall_s']:.1f}", f"{r['wall']:.2f}x"),
            ("CPU seconds", f"{o['cpu_s']:.1f}", f"{ours['cpu_s']:.1f}", f"{r['cpu']:.2f}x"),
            ("GFLOP forward", f"{o['gflop_forward']:.0f}", f"{ours['gflop_forward']:.0f}", ""),
            ("GFLOP backward", f"{o['gflop_backward']:.0f}", f"{ours['gflop_backward']:.0f}", ""),
            ("GFLOP total (work)", f"{o['gflop']:.0f}", f"{ours['gflop']:.0f}",
             f"{r['work']:.2f}x"),
            ("GFLOP/s (wall)", f"{o['gflop_per_s']:.1f}", f"{ours['gflop_per_s']:.1f}", ""),
            ("  of the GEMM peak", "fraction_of_peak"),
            ("GFLOP per CPU second", f"{o['gflop_per_cpu_s']:.1f}",
             f"{ours['gflop_per_cpu_s']:.1f}", ""),
            ("  of one core's peak", "fraction_of_core_peak"),
            ("load average before/after", "/".join(f"{x:.1f}" for x in o["load_average"]),
             "/".join(f"{x:.1f}" for x in ours["load_average"]), "")]
    rows = [(row[0], f"{o[row[1]]:.0%}", f"{ours[row[1]]:.0%}", "") if len(row) == 2 else row
            for row in rows if len(row) == 4 or peak is not None]    # fractions: CPU only
    lines += [f"  {a:<24}{b:>12}{c:>12}{d:>8}" for a, b, c, d in rows]
    for name, program in (("official", o), ("mvfa-lite", ours)):
        phases = ", ".join(f"{k.split(':')[1]} {v:.1f} s" for k, v in program["phases_s"].items())
        lines.append(f"  {name} phases: {phases}")
    if peak is None:
        return lines
    targets = s["targets"]
    lines.append(f"  targets: mvfa-lite at >= 70% of the GEMM peak: "
                 f"{'met' if targets['ours_at_least_70_percent_of_peak'] else 'not met'}; "
                 f"CPU-seconds ratio >= work ratio: "
                 f"{'met' if targets['cpu_ratio_at_least_work_ratio'] else 'not met'}")
    return lines
