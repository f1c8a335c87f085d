"""The paper's ablation and absorption figures, from sweeps run as DVC experiments (`tools/sweep.py`).

A sweep is a set of experiments, each one point: `-S` overrides of the default run that train one
DanceOPD student (seed 0) of a setting and evaluate it. Every point of an ablation sweep is shown
with its paired difference from one reference point, the default student (`ref`), scored on the
same prompts with the same noise; each claim the paper makes of a sweep ("a above b") is decided
by the paired bootstrap interval of a - b (`pipeline.eval.stats`): *reproduced* above 0,
*contradicted* below, a *tie* holding 0. One seed: the intervals hold no seed-to-seed spread. The
realism sweep trains its students with validation samples (``train.sample_every``) and draws
realism over training from their MLflow runs.

`collect` reads only what the experiments committed (their outcomes, params and the MLflow store),
never re-running anything, and writes `report/figures/` (PNGs, `points.json`) and `report/figures.md`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipeline.eval import metrics, scoring, stats

SETTING = "t2i_edit"  # the ablations' setting: the diagnostic one needs two more experts (README "Costs")
STUDENT = "danceopd-s0"
REFERENCE = "ref"  # the experiment of the default student: every ablation's reference point
# Every point runs only what it measures: the other rows of the default (baselines, routed teachers,
# the other setting's students) are left out, so a change of fields or eval params reruns none of them.
ROWS = {"run.baselines": "[]", "run.teachers": "[]"}
COMMON = ROWS | {f"settings.{SETTING}.methods": "[danceopd]", f"settings.{SETTING}.seeds": "[0]",
                 "settings.realism.methods": "[]"}
METHOD = "distill.methods.danceopd"
SCORES = {"gedit_local": "local edit success", "gedit_global": "global edit success", "geneval": "GenEval-style"}
ALPHAS, BETAS = (1.0, 2.0, 3.5, 7.0), (1.0, 2.0, 7.0)


def _cfg(alpha: float, beta: float) -> dict:
    return ({"fields.cfg": "true", "fields.cfg_scale": str(alpha)} if alpha != 1.0 else {}) | (
        {"eval.guidance": str(beta)} if beta != 1.0 else {})


# sweep -> (x label, {point: overrides}, what the paper reports (PAPER.md), its claims: (a, b, score,
# ">": a above b | "=": a and b in one band))
SWEEPS = {
    "query": ("query position", {"low": {}, "mid": {f"{METHOD}.query": "mid"}, "high": {f"{METHOD}.query": "high"},
                                 "uniform": {f"{METHOD}.query": "uniform"}},
              "low above mid and high (GEdit 5.751 against 4.649 and 4.813)",
              [("low", "mid", "gedit", ">"), ("low", "high", "gedit", ">")]),
    "k": ("K states per rollout", {str(k): {f"{METHOD}.queries": str(k)} if k > 1 else {} for k in (1, 2, 4, 8, 16)},
          "K = 1 above K = 4 and 16 (GEdit 5.751 against 5.330 and 5.127)",
          [("1", "4", "gedit", ">"), ("1", "16", "gedit", ">")]),
    "rollout": ("rollout steps", {str(r): {f"{METHOD}.rollout_steps": str(r)} if r != 16 else {} for r in (8, 16, 28)},
                "8 to 28 steps in one band (GEdit 5.75, 5.751, 5.70)",
                [("8", "16", "gedit", "="), ("28", "16", "gedit", "=")]),
    "init": ("student init", {"edit": {}, "base": {f"settings.{SETTING}.init": "base"}},
             "the edit-capable (local-edit) init above the T2I one (diagnostic, Fig. 6 middle)",
             [("edit", "base", "gedit", ">")]),
    "cfg": ("absorbed α × inference β", {f"a{a:g}_b{b:g}": _cfg(a, b) for a in ALPHAS for b in BETAS},
            "α = 3.5, β = 2 best (GEdit 5.83), above train-only absorption (3.5, 1: 5.42) and over-guiding (7, 7: 4.02)",
            [("a3.5_b2", "a3.5_b1", "gedit", ">"), ("a3.5_b2", "a7_b7", "gedit", ">")]),
    "realism": ("training step", {m: ROWS | {f"settings.{SETTING}.methods": "[]", "settings.realism.methods": f"[{m}]",
                                             "settings.realism.seeds": "[0]", "train.sample_every": "10"}
                                  for m in ("danceopd", "offpolicy")},
                "DanceOPD closes 85% of the realism gap, off-policy less",
                [("danceopd", "offpolicy", "realism", ">")]),
}


def student(sweep: str, point: str) -> str:
    """The outcomes file (below data/outcomes/) of a point's student."""
    return f"realism/{point}-s0" if sweep == "realism" else f"{SETTING}/{STUDENT}"


def experiment(sweep: str, point: str) -> tuple[str, dict]:
    """(the experiment's name, its `-S` overrides): an ablation point equal to the default is `ref`."""
    overrides = SWEEPS[sweep][1][point]
    if sweep != "realism" and not overrides:
        return REFERENCE, dict(COMMON)
    return f"{sweep}_{point}", ({} if sweep == "realism" else dict(COMMON)) | overrides


def _difference(a: dict, b: dict, score: str) -> dict:
    (va, cats), (vb, _) = scoring.select([a], score), scoring.select([b], score)
    d, lo, hi = stats.paired_difference(va, vb, cats)
    return {"value": d, "ci": [lo, hi]}


def _reading(diff: dict) -> str:
    lo, hi = diff["ci"]
    return "tie" if math.isnan(lo) or lo <= 0 <= hi else "above" if lo > 0 else "below"


def claims(sweep: str, outcomes: dict[str, dict]) -> list[dict]:
    """The paper's claims of a sweep (`outcomes`: point -> its student's outcomes), each decided by
    the paired interval of a - b: *reproduced*, *contradicted*, or a *tie* (for "=": reproduced
    when the interval holds 0, else *contradicted*)."""
    rows = []
    for a, b, score, says in SWEEPS[sweep][3]:
        if a in outcomes and b in outcomes:
            diff, called = _difference(outcomes[a], outcomes[b], score), None
            called = _reading(diff)
            verdict = ({"above": "reproduced", "below": "contradicted", "tie": "tie"}[called] if says == ">"
                       else "reproduced" if called == "tie" else "contradicted")
            rows.append({"a": a, "b": b, "score": score, "says": says, "difference": diff, "verdict": verdict})
    return rows


def ablation(sweep: str, points: dict[str, dict]) -> dict:
    """One ablation sweep's numbers (`points`: point -> its student's outcomes): each point's
    scores, its paired difference from the reference point, and the paper's claims decided."""
    ref = next(p for p in SWEEPS[sweep][1] if experiment(sweep, p)[0] == REFERENCE)
    rows = {}
    for point, out in points.items():
        rows[point] = {"experiment": experiment(sweep, point)[0], **{s: scoring.score([out], s) for s in SCORES}}
        if point != ref and ref in points:
            rows[point]["difference"] = {s: _difference(out, points[ref], s) for s in SCORES}
    return {"x": SWEEPS[sweep][0], "paper": SWEEPS[sweep][2], "points": rows, "claims": claims(sweep, points)}


def cfg_grid(points: dict[str, dict], nfe: dict[str, int]) -> dict:
    """GEdit (all edits) and GenEval-style of every α × β point, GEdit's paired difference from
    α = β = 1, and the NFE a sampling step (`nfe`: point -> NFE per image / steps): an absorbing
    student at β = 1 needs 1 where the guided teacher it absorbed needs 2."""
    grid = {}
    for point, out in points.items():
        grid[point] = {"gedit": scoring.score([out], "gedit"), "geneval": scoring.score([out], "geneval"),
                       "nfe": nfe.get(point)}
        if point != "a1_b1" and "a1_b1" in points:
            grid[point]["difference"] = _difference(out, points["a1_b1"], "gedit")
    return {"x": SWEEPS["cfg"][0], "paper": SWEEPS["cfg"][2], "grid": grid, "claims": claims("cfg", points)}


def realism_curves(histories: dict[str, list[dict]], points: dict[str, dict], init: dict | None,
                   teacher: dict | None) -> dict:
    """Realism reward over training per method (`histories`: method -> rows {step, realism, lo, hi}
    of its validation samples, step 0 the init), and from the final evaluation (`points`: method ->
    outcomes, on the same prompts as the `init` and the realism `teacher`) the gap closure with its
    paired interval, and the paper's claim decided."""
    out = {"x": SWEEPS["realism"][0], "paper": SWEEPS["realism"][2], "claims": claims("realism", points),
           "curves": {m: sorted(rows, key=lambda r: r["step"]) for m, rows in histories.items()}, "closure": {}}
    for method, student_outcomes in points.items():
        if init is not None and teacher is not None:
            arrays = [scoring.select([o], "realism")[0] for o in (student_outcomes, init, teacher)]
            point, resampled = stats.bootstrap_scores(arrays)
            closure = [metrics.realism_gap_closure(*r) for r in resampled]
            lo, hi = np.nanpercentile(closure, [2.5, 97.5]) if np.isfinite(closure).any() else (math.nan, math.nan)
            out["closure"][method] = {"value": metrics.realism_gap_closure(*point), "ci": [float(lo), float(hi)]}
    return out


def plot_ablation(data: dict, path: Path) -> None:
    plt = _pyplot()
    points = list(data["points"])
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.2), squeeze=False)
    for ax, (score, label) in zip(axes[0], SCORES.items()):
        values = [data["points"][p][score]["value"] for p in points]
        lo = [v - data["points"][p][score]["ci"][0] for p, v in zip(points, values)]
        hi = [data["points"][p][score]["ci"][1] - v for p, v in zip(points, values)]
        ax.errorbar(range(len(points)), values, yerr=[np.nan_to_num(lo), np.nan_to_num(hi)], fmt="o-", capsize=3)
        for i, p in enumerate(points):
            if "difference" in data["points"][p]:
                d = data["points"][p]["difference"][score]
                ax.annotate(f"{d['value']:+.3f}\n[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]", (i, values[i]),
                            textcoords="offset points", xytext=(0, 8), ha="center", fontsize=6)
        ax.set_xticks(range(len(points)), points)
        ax.set_xlabel(data["x"])
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"{data['x']}: score [95% CI]; above each point its paired difference from the reference", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cfg(data: dict, path: Path) -> None:
    plt = _pyplot()
    cells = {(i, j): data["grid"].get(f"a{a:g}_b{b:g}") for i, a in enumerate(ALPHAS) for j, b in enumerate(BETAS)}
    grid = np.full((len(ALPHAS), len(BETAS)), np.nan)
    for (i, j), cell in cells.items():
        grid[i, j] = cell["gedit"]["value"] if cell else np.nan
    fig, ax = plt.subplots(figsize=(6.5, 5))
    middle = np.nanmean([np.nanmin(grid), np.nanmax(grid)])
    for (i, j), cell in cells.items():
        if cell is not None:
            d = f"\n{_fmt(cell['difference'])}" if "difference" in cell else "\n(reference)"
            ax.text(j, i, f"{grid[i, j]:.3f}{d}\nGenEval {cell['geneval']['value']:.3f}, NFE {cell['nfe']}",
                    ha="center", va="center", fontsize=6, color="black" if grid[i, j] > middle else "white")
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(image, label="GEdit-style success (all edits)")
    ax.set_xticks(range(len(BETAS)), [f"β={b:g}" for b in BETAS])
    ax.set_yticks(range(len(ALPHAS)), [f"α={a:g}" for a in ALPHAS])
    ax.set_xlabel("inference guidance β")
    ax.set_ylabel("absorbed scale α")
    ax.set_title("GEdit; paired difference from α=β=1 [95% CI]; NFE per image\n"
                 "(an absorbing student at β=1: 1 NFE a step, the guided teacher 2)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_realism(data: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method, rows in data["curves"].items():
        steps = [r["step"] for r in rows]
        closure = data["closure"].get(method)
        label = method + (f" (gap closure {_fmt(closure, sign=False)})" if closure else "")
        ax.plot(steps, [r["realism"] for r in rows], "o-", label=label)
        ax.fill_between(steps, [r["lo"] for r in rows], [r["hi"] for r in rows], alpha=0.2)
    ax.set_xlabel("training step (0: the init)")
    ax.set_ylabel("realism reward, validation samples")
    ax.legend(fontsize=7)
    ax.set_title("realism over training, one run each [95% CI];\ngap closure from the final evaluation", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(d: dict, sign: bool = True) -> str:
    f = "+.3f" if sign else ".3f"
    return f"{d['value']:{f}} [{d['ci'][0]:{f}}, {d['ci'][1]:{f}}]"


def readings(collected: dict) -> list[str]:
    """One line per figure: each paper claim's verdict with its interval, then what the figure shows."""
    lines = []
    for sweep, data in collected.items():
        said = [f"{c['a']} {'above' if c['says'] == '>' else 'with'} {c['b']} on {c['score']}: **{c['verdict']}**, "
                f"{c['a']} − {c['b']} = {_fmt(c['difference'])}" for c in data["claims"]]
        if sweep == "realism":
            said += [f"{m}: closure {_fmt(c, sign=False)}" for m, c in data["closure"].items()]
            said += [f"{m}: validation realism {rows[0]['realism']:.3f} at step 0 → {rows[-1]['realism']:.3f} at "
                     f"{rows[-1]['step']}" for m, rows in data["curves"].items() if rows]
        lines.append(f"**{sweep}** ({data['x']}; paper: {data['paper']}): "
                     + ("; ".join(said) or "the points of its claims have not run yet"))
    return lines


def write(collected: dict, out: Path, markdown: Path) -> list[Path]:
    """The PNGs and points.json under `out`, and the page that embeds them."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sweep, data in collected.items():
        path = out / f"{sweep}.png"
        {"cfg": plot_cfg, "realism": plot_realism}.get(sweep, plot_ablation)(data, path)
        written.append(path)
    (out / "points.json").write_text(json.dumps(collected, indent=1, sort_keys=True) + "\n")
    lines = ["# Figures: the paper's ablations and absorption curves, as DVC experiments", "",
             "Generated by `python tools/sweep.py collect` from the finished experiments (README \"Figures\"):",
             f"setting `{SETTING}`, one DanceOPD student (seed 0) a point, each scored on the same prompts with the",
             "same noise. A claim of the paper (\"a above b\") is decided by the paired 95% interval of a − b:",
             "*reproduced* above 0, *contradicted* below, a *tie* holding 0 (\"a with b\", one band: reproduced",
             "when it holds 0). One training seed: the intervals hold no seed-to-seed spread. Our scores are",
             "success rates on the ShapesEdit world, the paper's VIEScore / GenEval: compare directions only.", ""]
    for (sweep, _), line in zip(collected.items(), readings(collected)):
        rel = (out / f"{sweep}.png").relative_to(markdown.parent)
        lines += [f"## {sweep}", "", f"![{sweep}]({rel.as_posix()})", "", line, ""]
    markdown.write_text("\n".join(lines))
    return [*written, out / "points.json", markdown]
