"""The report in the paper's shape: Tables 2A and 2B beside the paper's numbers, the realism
closure, the diagnostic ablations, and a verdict on each of the paper's claims.

Every score carries its bootstrap 95% interval (`pipeline.eval.stats`); a student trained with
several seeds is scored on the pooled per-sample outcomes of all of them. Our scores are success
rates (edits judged by parsing the output against the exact target scene), the paper's are
VIEScore (GEdit) and GenEval: compare directions and ratios, never values. A claim is
*reproduced* when our intervals separate in the paper's direction, *contradicted* when they
separate the other way, and a *tie* otherwise.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data import world
from pipeline.eval import metrics, stats

GEDIT_HEADERS = {"subject_add": "subj-add", "subject_replace": "subj-rep", "background_change": "bg-chg",
                 "style_change": "style-chg", "colour_alter": "color-alt", "subject_remove": "subj-rem"}

# (row label, metrics name relative to the eval folder (students: without the seed), paper key)
TABLES = {
    "t2i_edit": ("Table 2A: T2I + Edit", [
        ("T2I source (base)", "sources/base", "t2i_source"), ("Edit source", "sources/edit", "edit_source"),
        ("Routed teacher", "t2i_edit/teacher", None), ("Joint training", "t2i_edit/joint", "joint"),
        ("Weight merge", "t2i_edit/merge", "merge"), ("Off-policy distill.", "t2i_edit/offpolicy", "offpolicy"),
        ("DiffusionOPD", "t2i_edit/diffusionopd", "diffusionopd"), ("**DanceOPD**", "t2i_edit/danceopd", "danceopd")]),
    "local_global": ("Table 2B: Local + Global edit", [
        ("Local-edit source", "sources/local_edit", "local_source"),
        ("Global-edit source", "sources/global_edit", "global_source"),
        ("Routed teacher", "local_global/teacher", None), ("Joint training", "local_global/joint", "joint"),
        ("Weight merge", "local_global/merge", "merge"), ("Off-policy distill.", "local_global/offpolicy", "offpolicy"),
        ("DiffusionOPD", "local_global/diffusionopd", "diffusionopd"),
        ("**DanceOPD**", "local_global/danceopd", "danceopd")]),
}
# PAPER.md §3.1-3.2: (GEdit VIEScore average, GenEval overall); None where the paper gives none.
PAPER = {
    "t2i_edit": {"t2i_source": (None, 0.832), "edit_source": (4.930, 0.711), "joint": (4.617, 0.808),
                 "merge": (None, 0.836), "offpolicy": (4.528, 0.818), "diffusionopd": (4.947, 0.833),
                 "danceopd": (5.347, 0.849)},
    "local_global": {"local_source": (5.095, 0.793), "global_source": (3.750, 0.808), "joint": (4.546, 0.821),
                     "merge": (4.715, 0.811), "offpolicy": (4.736, 0.798), "diffusionopd": (4.661, 0.822),
                     "danceopd": (5.498, 0.848)},
}
PAPER_REALISM_CLOSURE = 0.853
# The paper's claims: (id, statement, (model a, metric), (model b, metric)) with a better than b.
CLAIMS = [
    ("2A-1", "DanceOPD edits better than DiffusionOPD (5.347 vs 4.947)", ("t2i_edit/danceopd", "gedit"),
     ("t2i_edit/diffusionopd", "gedit")),
    ("2A-2", "DanceOPD edits better than off-policy distillation (5.347 vs 4.528)", ("t2i_edit/danceopd", "gedit"),
     ("t2i_edit/offpolicy", "gedit")),
    ("2A-3", "DanceOPD edits better than its edit source (+8.5%)", ("t2i_edit/danceopd", "gedit"),
     ("sources/edit", "gedit")),
    ("2A-4", "DanceOPD keeps T2I: GenEval-style above the T2I source (0.849 vs 0.832)", ("t2i_edit/danceopd", "geneval"),
     ("sources/base", "geneval")),
    ("2A-5", "DanceOPD edits better than joint training (5.347 vs 4.617)", ("t2i_edit/danceopd", "gedit"),
     ("t2i_edit/joint", "gedit")),
    ("2B-1", "DanceOPD edits better than off-policy, the best baseline (+16.1%)", ("local_global/danceopd", "gedit"),
     ("local_global/offpolicy", "gedit")),
    ("2B-2", "DanceOPD edits better than DiffusionOPD (5.498 vs 4.661)", ("local_global/danceopd", "gedit"),
     ("local_global/diffusionopd", "gedit")),
    ("2B-3", "DanceOPD edits better than its local-edit source (+7.9%)", ("local_global/danceopd", "gedit"),
     ("sources/local_edit", "gedit")),
    ("2B-4", "DanceOPD edits better than weight merge (5.498 vs 4.715)", ("local_global/danceopd", "gedit"),
     ("local_global/merge", "gedit")),
    ("R-1", "On-policy absorbs more realism than off-policy (≈0.30 vs ≈0.27)", ("realism/danceopd", "realism"),
     ("realism/offpolicy", "realism")),
    ("D-1", "Hard routing beats soft mixing (5.751 vs 4.994)", ("diagnostic/danceopd", "gedit"),
     ("diagnostic/soft", "gedit")),
    ("D-2", "One route per update beats routes mixed in a batch (K1G1 5.751 vs K1G3 5.485, if G is this)",
     ("diagnostic/danceopd", "gedit"), ("diagnostic/per_sample", "gedit")),
]
CATEGORY_SCORES = {"geneval": world.T2I_CATEGORIES, "gedit": world.EDIT_CATEGORIES}


def _score(outcomes: list[dict], name: str) -> dict:
    """Point estimate and interval of one score over pooled per-sample outcomes (seeds concatenated)."""
    if name in CATEGORY_SCORES:
        ok = [o for out in outcomes for o in out[name]["ok"]]
        cats = [c for out in outcomes for c in out[name]["category"]]
        value, _ = metrics.category_score(ok, cats, CATEGORY_SCORES[name])
        return {"value": value, "ci": list(stats.category_mean_interval(ok, cats))}
    values = np.asarray([v for out in outcomes for v in out[name]], dtype=np.float64)
    value = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    return {"value": value, "ci": list(stats.mean_interval(values))}


def load_model(eval_dir: Path, outcomes_dir: Path, name: str) -> dict | None:
    """A model's pooled scores, per-category scores and distribution metrics (students: every seed)."""
    metrics_files = sorted(eval_dir.glob(f"{name}.json")) or sorted(eval_dir.glob(f"{name}-s*.json"))
    if not metrics_files:
        return None
    outcomes = [json.loads((outcomes_dir / p.relative_to(eval_dir)).read_text()) for p in metrics_files]
    seeds = [json.loads(p.read_text()) for p in metrics_files]
    model = {"name": name, "seeds": len(seeds)}
    for score in ("geneval", "gedit", "preservation", "clip_score", "realism"):
        model[score] = _score(outcomes, score)
    for score, known in CATEGORY_SCORES.items():
        ok = [o for out in outcomes for o in out[score]["ok"]]
        cats = [c for out in outcomes for c in out[score]["category"]]
        model[f"{score}_by_category"] = metrics.category_score(ok, cats, known)[1]
    for key in ("kid", "fid", "fid_floor", "nfe"):  # distribution metrics: the seeds' mean; their spread below
        model[key] = float(np.mean([s[key] for s in seeds]))
    model["kid_ci"] = [min(s["kid_ci"][0] for s in seeds), max(s["kid_ci"][1] for s in seeds)]
    return model


def collect(eval_dir: Path, outcomes_dir: Path, evaluator: Path, router: Path, settings, fields) -> dict:
    """Everything the report shows, as one JSON-able dict (models without metrics are left out)."""
    names = {row[1] for _, rows in TABLES.values() for row in rows} | {c[2][0] for c in CLAIMS} | {c[3][0] for c in CLAIMS}
    names |= {f"{s}/{m}" for s, setting in settings.items() for m in setting.methods}
    names |= {"sources/base", "sources/realism", "diagnostic/teacher", "diagnostic/teacher_cfg"}
    models = {n: m for n in sorted(names) if (m := load_model(eval_dir, outcomes_dir, n)) is not None}
    read = lambda path: json.loads(path.read_text()) if path.exists() else {}  # noqa: E731
    return {"evaluator": read(evaluator), "router": read(router), "models": models, "claims": claims(models),
            "realism": realism_closure(models), "cfg_absorbed": fields.absorb_guidance,
            "cfg_scale": fields.guidance_scale}


def claims(models: dict) -> list[dict]:
    """Each paper claim with our two scores, their intervals and the verdict."""
    out = []
    for claim_id, statement, (a, score_a), (b, score_b) in CLAIMS:
        if a not in models or b not in models:  # a row this configuration does not run (params `run`)
            out.append({"id": claim_id, "claim": statement, "a": a, "b": b, "score": score_a, "verdict": "not run"})
            continue
        sa, sb = models[a][score_a], models[b][score_b]
        verdict = {"a": "reproduced", "b": "contradicted", "tie": "tie"}[stats.direction(tuple(sa["ci"]), tuple(sb["ci"]))]
        out.append({"id": claim_id, "claim": statement, "a": a, "b": b, "score": score_a, "a_value": sa,
                    "b_value": sb, "verdict": verdict})
    return out


def realism_closure(models: dict) -> dict:
    """Realism reward of the init (base), each realism student and the teacher, and the gap closure."""
    init, teacher = models.get("sources/base"), models.get("sources/realism")
    if init is None or teacher is None:
        return {}
    out = {"init": init["realism"], "teacher": teacher["realism"], "init_geneval": init["geneval"], "students": {}}
    for name, model in models.items():
        if name.startswith("realism/"):
            out["students"][name] = {
                "realism": model["realism"], "geneval": model["geneval"],
                "closure": metrics.realism_gap_closure(model["realism"]["value"], init["realism"]["value"],
                                                       teacher["realism"]["value"])}
    return out


def _fmt(score: dict | float | None, digits: int = 3) -> str:
    if score is None:
        return "–"
    if isinstance(score, dict):
        v, (lo, hi) = score["value"], score["ci"]
        return "–" if math.isnan(v) else f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return "–" if math.isnan(score) else f"{score:.{digits}f}"


def _paper(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(results: dict, setting: str) -> list[str]:
    title, rows = TABLES[setting]
    header = ["model", *GEDIT_HEADERS.values(), "GEdit [95% CI]", "GenEval [95% CI]", "KID [CI]",
              "FID (floor)", "paper GEdit", "paper GenEval"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if not any(name in results["models"] for _, name, _ in rows):
        return [f"### {title}", "", "Not run in this configuration (params `run` and `settings`; README: Costs).", ""]
    for label, name, paper_key in rows:
        model = results["models"].get(name)
        if model is None:
            continue
        paper = PAPER[setting].get(paper_key, (None, None)) if paper_key else (None, None)
        kid = f"{model['kid']:.3g} [{model['kid_ci'][0]:.3g}, {model['kid_ci'][1]:.3g}]"
        cats = [_fmt(model["gedit_by_category"].get(c), 2) for c in GEDIT_HEADERS]
        seeds = f" ({model['seeds']} seeds)" if model["seeds"] > 1 else ""
        lines.append("| " + " | ".join([label + seeds, *cats, _fmt(model["gedit"]), _fmt(model["geneval"]), kid,
                                        f"{model['fid']:.0f} ({model['fid_floor']:.0f})", _paper(paper[0]),
                                        _paper(paper[1])]) + " |")
    return lines + [""]


def markdown(results: dict) -> str:
    """The report as markdown: evaluator accuracy, Tables 2A and 2B, realism, ablations, claims."""
    ev, router = results["evaluator"], results["router"]
    lines = ["# Results", "",
             f"Evaluator scene accuracy on held-out renders: **{ev.get('scene_accuracy', math.nan):.4f}** "
             f"(the metrics mean something only at ≥ 0.99). Router test accuracy: "
             f"{router.get('test_accuracy', math.nan):.3f} from {router.get('labelled', '?')} labels. "
             f"CFG absorbed: {results['cfg_absorbed']} (scale {results['cfg_scale']}).", "",
             "Ours are success rates in [0, 1] (edits: the parsed output is exactly the target scene; "
             "GenEval-style: the parsed scene satisfies the prompt's spec), each with a bootstrap 95% interval; "
             "the paper's are VIEScore (GEdit, 0-10) and GenEval. Compare directions and ratios, not values. "
             "KID and FID are in the evaluator's feature space against a cached real reference set; FID's "
             "floor is what real images score at the same sample size.", ""]
    for setting in TABLES:
        lines += _table(results, setting)
    lines += _realism(results["realism"]) + _diagnostic(results["models"]) + _claims(results["claims"])
    return "\n".join(lines) + "\n"


def _realism(realism: dict) -> list[str]:
    if not realism:
        return []
    lines = ["### Realism absorption (one route: the realism expert; students from base)", "",
             "| model | realism reward [95% CI] | gap closure | GenEval-style [95% CI] |", "|---|---|---|---|",
             f"| base (before) | {_fmt(realism['init'])} | 0 | {_fmt(realism['init_geneval'])} |"]
    for name, s in realism["students"].items():
        lines.append(f"| {name} | {_fmt(s['realism'])} | {_fmt(s['closure'])} | {_fmt(s['geneval'])} |")
    lines += [f"| realism expert (teacher) | {_fmt(realism['teacher'])} | 1 | – |", "",
              f"The paper closes {PAPER_REALISM_CLOSURE:.1%} of the student-to-teacher realism gap.", ""]
    return lines


def _diagnostic(models: dict) -> list[str]:
    rows = [(n, m) for n, m in models.items() if n.startswith("diagnostic/")]
    if not rows:
        return []
    lines = ["### Diagnostic setting (t2i + local + global; the ablations)", "",
             "| model | GEdit [95% CI] | GenEval [95% CI] | NFE |", "|---|---|---|---|"]
    lines += [f"| {n} | {_fmt(m['gedit'])} | {_fmt(m['geneval'])} | {m['nfe']:.0f} |" for n, m in rows]
    return lines + [""]


def _claims(claim_rows: list[dict]) -> list[str]:
    lines = ["### The paper's claims", "", "| | claim | ours (a vs b) | verdict |", "|---|---|---|---|"]
    for c in claim_rows:
        if c["verdict"] == "not run":
            lines.append(f"| {c['id']} | {c['claim']} | {c['a']} vs {c['b']}: not run here | not run |")
            continue
        lines.append(f"| {c['id']} | {c['claim']} | {c['score']}: {_fmt(c['a_value'])} vs {_fmt(c['b_value'])} "
                     f"| **{c['verdict']}** |")
    return lines + ["", "A direction is called only when the 95% intervals separate; otherwise it is a tie.", ""]


FILES = ("results.md", "results.json", "scores.png")


def write(results: dict, out: Path) -> list[Path]:
    """`FILES` in `out`: the markdown report, the JSON behind it and the plot."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(results))
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    plot(results, out / "scores.png")
    return [out / name for name in FILES]


def plot(results: dict, path: Path) -> None:
    """GEdit and GenEval with their intervals for the rows of Tables 2A and 2B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TABLES), figsize=(12, 3.8), sharey=True)
    for ax, (setting, (title, rows)) in zip(np.atleast_1d(axes), TABLES.items()):
        shown = [(label.strip("*"), results["models"][name]) for label, name, _ in rows if name in results["models"]]
        for i, key in enumerate(("gedit", "geneval")):
            xs = [x + 0.4 * i for x in range(len(shown))]
            values = [m[key]["value"] for _, m in shown]
            errors = _errors([m[key] for _, m in shown])
            ax.bar(xs, values, width=0.4, yerr=errors, capsize=2, label={"gedit": "GEdit", "geneval": "GenEval"}[key])
        ax.set_xticks([x + 0.2 for x in range(len(shown))], [label for label, _ in shown], rotation=35, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 1)
    np.atleast_1d(axes)[0].set_ylabel("success rate (95% CI)")
    np.atleast_1d(axes)[0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _errors(scores: Sequence[dict]) -> np.ndarray:
    """(2, N) distances from each value down and up to its interval (0 when there is none)."""
    lo = [max(0.0, s["value"] - s["ci"][0]) if not math.isnan(s["ci"][0]) else 0.0 for s in scores]
    hi = [max(0.0, s["ci"][1] - s["value"]) if not math.isnan(s["ci"][1]) else 0.0 for s in scores]
    return np.asarray([lo, hi])
