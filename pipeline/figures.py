"""The paper's ablation and absorption figures, from sweeps run as DVC experiments (`tools/sweep.py`).

A sweep is a set of experiments, each one point: `-S` overrides of the default run that train one
DanceOPD student (seed 0) of a setting and evaluate it. Every point of every ablation sweep is
compared with one reference point, the default student (`ref`), on the same prompts with the same
noise, by the paired bootstrap interval of the difference (`pipeline.eval.stats`): a point is
*above* / *below* the reference when that interval excludes 0, else a *tie*. One seed: the
intervals hold no seed-to-seed spread. The realism sweep trains its students with validation
samples (``train.sample_every``) and draws realism over training from their MLflow runs.

`collect` reads only what the experiments committed (their outcomes, params and the MLflow store),
never re-running anything, and writes `report/figures/` (PNGs, `points.json`) and `report/figures.md`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipeline.eval import scoring, stats

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


# sweep -> (x label, {point: overrides}, the paper's reported direction (PAPER.md))
SWEEPS = {
    "query": ("query position", {"low": {}, "mid": {f"{METHOD}.query": "mid"}, "high": {f"{METHOD}.query": "high"},
                                 "uniform": {f"{METHOD}.query": "uniform"}},
              "low above mid and high (GEdit 5.751 against 4.649 and 4.813)"),
    "k": ("K states per rollout", {str(k): {f"{METHOD}.queries": str(k)} if k > 1 else {} for k in (1, 2, 4, 8, 16)},
          "K = 1 above K = 4 and 16 (GEdit 5.751 against 5.330 and 5.127)"),
    "rollout": ("rollout steps", {str(r): {f"{METHOD}.rollout_steps": str(r)} if r != 16 else {} for r in (8, 16, 28)},
                "8 to 28 steps all in one band (GEdit 5.75, 5.751, 5.70)"),
    "init": ("student init", {"edit": {}, "base": {f"settings.{SETTING}.init": "base"}},
             "the edit-capable init above the T2I one"),
    "cfg": ("absorbed α × inference β", {f"a{a:g}_b{b:g}": _cfg(a, b) for a in ALPHAS for b in BETAS},
            "α = 3.5, β = 2 best (GEdit 5.83); α β ≫ 7 over-guided (4.02 at 7 × 7)"),
    "realism": ("training step", {m: ROWS | {f"settings.{SETTING}.methods": "[]", "settings.realism.methods": f"[{m}]",
                                             "settings.realism.seeds": "[0]", "train.sample_every": "10"}
                                  for m in ("danceopd", "offpolicy")},
                "DanceOPD closes 85% of the realism gap; off-policy less"),
}


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


def ablation(sweep: str, outcomes: dict[str, dict]) -> dict:
    """The collected numbers of one ablation sweep: each point's scores and its paired difference
    from the reference (`outcomes`: experiment name -> the student's outcomes file)."""
    ref = outcomes.get(REFERENCE)
    rows = {}
    for point in SWEEPS[sweep][1]:
        name, _ = experiment(sweep, point)
        if name not in outcomes or ref is None:
            continue
        out = outcomes[name]
        rows[point] = {"experiment": name, **{s: scoring.score([out], s) for s in SCORES}}
        if name != REFERENCE:
            rows[point]["difference"] = {s: _difference(out, ref, s) for s in SCORES}
    return {"x": SWEEPS[sweep][0], "paper": SWEEPS[sweep][2], "points": rows}


def cfg_grid(outcomes: dict[str, dict], metrics: dict[str, dict]) -> dict:
    """GEdit (all edits) of every α × β point, its paired difference from α = β = 1, and the NFE a
    step: the student of α absorbed the guidance, so β = 1 needs 1 NFE where the teacher needs 2."""
    ref, grid = outcomes.get(REFERENCE), {}
    for a in ALPHAS:
        for b in BETAS:
            name, _ = experiment("cfg", f"a{a:g}_b{b:g}")
            if name in outcomes and ref is not None:
                grid[f"{a:g},{b:g}"] = {"gedit": scoring.score([outcomes[name]], "gedit"),
                                        "geneval": scoring.score([outcomes[name]], "geneval"),
                                        "difference": _difference(outcomes[name], ref, "gedit"),
                                        "nfe": metrics.get(name, {}).get("nfe")}
    return {"x": SWEEPS["cfg"][0], "paper": SWEEPS["cfg"][2], "grid": grid}


def realism_curves(histories: dict[str, list[dict]]) -> dict:
    """Realism reward over training per method (`histories`: method -> rows {step, realism, lo, hi}
    of its validation samples), with the gap closure the last step reaches against step 0 (the init)."""
    out = {}
    for method, rows in histories.items():
        rows = sorted(rows, key=lambda r: r["step"])
        out[method] = {"rows": rows, "gain": rows[-1]["realism"] - rows[0]["realism"] if rows else math.nan}
    return {"x": SWEEPS["realism"][0], "paper": SWEEPS["realism"][2], "curves": out}


def plot_ablation(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.suptitle(f"{data['x']}: score [95% CI]; a point's paired difference from the reference above it", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cfg(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.full((len(ALPHAS), len(BETAS)), np.nan)
    fig, ax = plt.subplots(figsize=(5, 4))
    for i, a in enumerate(ALPHAS):
        for j, b in enumerate(BETAS):
            if (cell := data["grid"].get(f"{a:g},{b:g}")) is not None:
                grid[i, j] = cell["gedit"]["value"]
                d = cell["difference"]
                ax.text(j, i, f"{grid[i, j]:.3f}\n{d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]\n"
                        f"NFE {cell['nfe']}", ha="center", va="center", fontsize=6)
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(image, label="GEdit-style success")
    ax.set_xticks(range(len(BETAS)), [f"β={b:g}" for b in BETAS])
    ax.set_yticks(range(len(ALPHAS)), [f"α={a:g}" for a in ALPHAS])
    ax.set_title("absorbed α × inference β (paired difference from α=β=1; NFE a step)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_realism(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for method, curve in data["curves"].items():
        steps = [r["step"] for r in curve["rows"]]
        ax.plot(steps, [r["realism"] for r in curve["rows"]], "o-", label=method)
        ax.fill_between(steps, [r["lo"] for r in curve["rows"]], [r["hi"] for r in curve["rows"]], alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("realism reward (validation samples)")
    ax.legend()
    ax.set_title("realism over training, one run each [95% CI]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(d: dict) -> str:
    return f"{d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def readings(collected: dict) -> list[str]:
    """One line per figure: what the points show against the reference, beside the paper's direction."""
    lines = []
    for sweep, data in collected.items():
        if sweep == "cfg":
            cells = {k: v for k, v in data["grid"].items() if k != "1,1"}
            called = [f"α,β={k}: {_reading(v['difference'])} {_fmt(v['difference'])}" for k, v in cells.items()]
        elif sweep == "realism":
            called = [f"{m}: realism {c['rows'][0]['realism']:.3f} → {c['rows'][-1]['realism']:.3f} "
                      f"(last [{c['rows'][-1]['lo']:.3f}, {c['rows'][-1]['hi']:.3f}])"
                      for m, c in data["curves"].items() if c["rows"]]
        else:
            called = [f"{p}: " + ", ".join(f"{s} {_reading(row['difference'][s])} {_fmt(row['difference'][s])}"
                                           for s in SCORES)
                      for p, row in data["points"].items() if "difference" in row]
        lines.append(f"**{sweep}** ({data['x']}; paper: {data['paper']}): " + ("; ".join(called) or "no points yet"))
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
             "Generated by `python tools/sweep.py collect` from the finished experiments (`tools/sweep.py`,",
             f"README \"Figures\"). Setting `{SETTING}`, one DanceOPD student (seed 0) per point, each compared with",
             "the default student (`ref`) on the same prompts and noise: *above* / *below* when the paired 95%",
             "interval of the difference excludes 0, else a *tie* (one seed: no seed-to-seed spread).", ""]
    for (sweep, _), line in zip(collected.items(), readings(collected)):
        rel = (out / f"{sweep}.png").relative_to(markdown.parent)
        lines += [f"## {sweep}", "", f"![{sweep}]({rel.as_posix()})", "", line, ""]
    markdown.write_text("\n".join(lines))
    return [*written, out / "points.json", markdown]
