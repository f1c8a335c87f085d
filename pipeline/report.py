"""The report in the paper's shape: Tables 2A and 2B beside the paper's numbers, the realism
closure, the diagnostic ablations, and a verdict on each of the paper's claims.

Everything is recomputed from the per-sample outcomes evaluation keeps (`data/outcomes/`), so
`python -m pipeline.report` alone redoes every interval and verdict. A student trained with
several seeds is an (S, N) array of outcomes on the same N prompts, scored by the mean over its
seeds with a two-level bootstrap (seeds, then prompts within categories: `pipeline.eval.stats`).

A claim of the paper is "model a is better than model b on a score". Both are scored on the same
prompts with the same noise, so the claim is decided by the **paired** bootstrap interval of a - b:
*reproduced* when it lies above 0, *contradicted* below, a *tie* when it holds 0; a verdict whose
students have one training seed says "(1 seed)", as its interval then holds no seed-to-seed
spread. The CLIP score's paired difference stands beside each claim. Our scores are success
rates (edits judged by parsing the output against the exact target scene), the paper's are
VIEScore (GEdit) and GenEval: compare directions and ratios, never values.
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import config
from pipeline.data import world
from pipeline.eval import metrics, paper, scoring, stats

GEDIT_HEADERS = {"subject_add": "subj-add", "subject_replace": "subj-rep", "subject_remove": "subj-rem",
                 "colour_alter": "color-alt", "background_change": "bg-chg", "style_change": "style-chg"}
SILENT = 0.15  # an edit category no teacher of the run passes this often carries no signal

# (row label, model name relative to the eval folder (students: without the seed), paper key)
TABLES = {
    "t2i_edit": ("Table 2A: T2I + Edit", [
        ("T2I source (base)", "sources/base", "t2i_source"), ("Edit source", "sources/edit", "edit_source"),
        ("Routed teacher", "t2i_edit/teacher", None), ("Routed teacher, CFG", "t2i_edit/teacher_cfg", None),
        ("Joint training", "t2i_edit/joint", "joint"), ("Weight merge", "t2i_edit/merge", "merge"),
        ("Off-policy distill.", "t2i_edit/offpolicy", "offpolicy"),
        ("Off-policy, data renders", "t2i_edit/offpolicy_data", None),
        ("DiffusionOPD", "t2i_edit/diffusionopd", "diffusionopd"), ("**DanceOPD**", "t2i_edit/danceopd", "danceopd")]),
    "local_global": ("Table 2B: Local + Global edit", [
        ("Local-edit source", "sources/local_edit", "local_source"),
        ("Global-edit source", "sources/global_edit", "global_source"),
        ("Routed teacher", "local_global/teacher", None), ("Routed teacher, CFG", "local_global/teacher_cfg", None),
        ("Joint training", "local_global/joint", "joint"), ("Weight merge", "local_global/merge", "merge"),
        ("Off-policy distill.", "local_global/offpolicy", "offpolicy"),
        ("Off-policy, data renders", "local_global/offpolicy_data", None),
        ("DiffusionOPD", "local_global/diffusionopd", "diffusionopd"),
        ("**DanceOPD**", "local_global/danceopd", "danceopd")]),
}
# The command that fills a table the default run leaves empty (README "Costs").
FILL = {"local_global": "dvc exp run -S 'run.experts=[edit,realism,local_edit,global_edit]' "
                        "-S 'run.baselines=[t2i_edit,local_global]' -S 'run.teachers=[t2i_edit,local_global]' "
                        "-S 'settings.local_global.methods=[danceopd,diffusionopd,offpolicy]'",
        "diagnostic": "dvc exp run -S 'run.experts=[edit,realism,local_edit,global_edit]' "
                      "-S 'run.teachers=[t2i_edit,diagnostic]' "
                      "-S 'settings.diagnostic.methods=[danceopd,soft,per_sample,query_mid,query_high,k4]'"}


class Model:
    """One model's per-sample outcomes (one file per training seed, on the same prompts) and its
    metrics files, scored by `pipeline.eval.scoring`."""

    def __init__(self, name: str, metrics_files: Sequence[dict], outcomes: Sequence[dict], student: bool):
        self.name, self.metrics, self.student = name, list(metrics_files), student
        self.seeds, self.files = len(outcomes), list(outcomes)
        for score in scoring.CATEGORY_SCORES:  # the seeds' prompts must agree
            scoring.select(self.files, score)

    def arrays(self, score: str) -> tuple[np.ndarray, list[str] | None]:
        """(outcomes (S, N'), categories or None) of one score; local/global GEdit keep their own prompts."""
        return scoring.select(self.files, score)

    def score(self, score: str) -> dict:
        """Point estimate and two-level interval of one score."""
        return scoring.score(self.files, score)

    def summary(self) -> dict:
        out = {"name": self.name, "seeds": self.seeds, "student": self.student}
        for score in scoring.SCORES:
            out[score] = self.score(score)
        for score in ("geneval", "gedit"):
            out[f"{score}_by_category"] = scoring.by_category(self.files, score)
        for key in ("kid", "fid", "fid_floor", "nfe"):  # distribution metrics: the seeds' mean
            out[key] = float(np.mean([m[key] for m in self.metrics]))
        out["kid_ci"] = [min(m["kid_ci"][0] for m in self.metrics), max(m["kid_ci"][1] for m in self.metrics)]
        return out


def load_model(eval_dir: Path, outcomes_dir: Path, name: str) -> Model | None:
    """A model's outcomes and metrics (a student: every seed's `<name>-s<seed>.json`), or None."""
    files = sorted(eval_dir.glob(f"{name}.json"))
    student = not files
    files = files or sorted(eval_dir.glob(f"{name}-s*.json"))
    if not files:
        return None
    outcomes = [json.loads((outcomes_dir / p.relative_to(eval_dir)).read_text()) for p in files]
    return Model(name, [json.loads(p.read_text()) for p in files], outcomes, student)


def collect(eval_dir: Path, outcomes_dir: Path, evaluator: Path, router: Path, settings, fields) -> dict:
    """Everything the report shows, as one JSON-able dict (models without metrics are left out)."""
    names = {row[1] for _, rows in TABLES.values() for row in rows} | {c[2] for c in paper.CLAIMS} | {c[3] for c in paper.CLAIMS}
    names |= {f"{s}/{m}" for s, setting in settings.items() for m in setting.methods}
    names |= {"sources/base", "sources/realism", "diagnostic/teacher", "diagnostic/teacher_cfg"}
    loaded = {n: m for n in sorted(names) if (m := load_model(eval_dir, outcomes_dir, n)) is not None}
    read = lambda path: json.loads(path.read_text()) if path.exists() else {}  # noqa: E731
    return {"evaluator": read(evaluator), "router": read(router),
            "models": {n: m.summary() for n, m in loaded.items()}, "claims": claims(loaded),
            "realism": realism_closure(loaded), "can_say": can_say(loaded),
            "cfg_absorbed": fields.absorb_guidance, "cfg_scale": fields.guidance_scale}


def _difference(a: Model, b: Model, score: str) -> dict:
    (va, cats), (vb, _) = a.arrays(score), b.arrays(score)
    d, lo, hi = stats.paired_difference(va, vb, cats)
    return {"value": d, "ci": [lo, hi]}


def claims(models: dict[str, Model]) -> list[dict]:
    """Each paper claim: both scores, the paired difference a - b with its two-level interval, the
    verdict, and the CLIP score's paired difference beside it."""
    out = []
    for claim_id, statement, a, b, score in paper.CLAIMS:
        row = {"id": claim_id, "claim": statement, "a": a, "b": b, "score": score}
        if a not in models or b not in models:  # a row this configuration does not run (params `run`)
            out.append(row | {"verdict": "not run"})
            continue
        ma, mb = models[a], models[b]
        diff = _difference(ma, mb, score)
        seeds = min([m.seeds for m in (ma, mb) if m.student] or [1])
        row |= {"a_value": ma.score(score), "b_value": mb.score(score), "difference": diff,
                "seeds": [ma.seeds, mb.seeds], "verdict": stats.verdict(*diff["ci"], seeds=seeds)}
        if score != "clip_score":
            row["clip_difference"] = _difference(ma, mb, "clip_score")
        out.append(row)
    return out


def realism_closure(models: dict[str, Model]) -> dict:
    """Realism reward of the init (base), each realism student and the teacher, the gap closure with
    its two-level paired interval (the three scored on the same realism prompts), and GenEval."""
    init, teacher = models.get("sources/base"), models.get("sources/realism")
    if init is None or teacher is None:
        return {}
    out = {"init": init.score("realism"), "teacher": teacher.score("realism"), "init_geneval": init.score("geneval"),
           "teacher_geneval": teacher.score("geneval"), "students": {}}
    for name, model in models.items():
        if name.startswith("realism/"):
            points, resampled = stats.bootstrap_scores(
                [m.arrays("realism")[0] for m in (model, init, teacher)])
            closure = [metrics.realism_gap_closure(*p) for p in resampled]
            lo, hi = np.nanpercentile(closure, [2.5, 97.5]) if np.isfinite(closure).any() else (math.nan, math.nan)
            out["students"][name] = {"realism": model.score("realism"), "geneval": model.score("geneval"),
                                     "seeds": model.seeds, "closure": {
                                         "value": metrics.realism_gap_closure(*points), "ci": [float(lo), float(hi)]}}
    return out


def can_say(models: dict[str, Model]) -> dict:
    """Which edit categories carry a signal: those some teacher of the run (a source or a routed
    teacher) passes at least `SILENT` of the time; in the others every model fails alike."""
    teachers = [m for n, m in models.items() if n.startswith("sources/") or n.split("/")[-1].startswith("teacher")]
    best = {}
    for m in teachers:
        for c, v in scoring.by_category(m.files, "gedit").items():
            best[c] = max(best.get(c, 0.0), v)
    return {"best_teacher": best, "silent": [c for c in world.EDIT_CATEGORIES if best.get(c, 0.0) < SILENT]}


def _fmt(score: dict | float | None, digits: int = 3, sign: bool = False) -> str:
    if score is None:
        return "–"
    if isinstance(score, dict):
        v, (lo, hi) = score["value"], score["ci"]
        if math.isnan(v):
            return "–"
        f = f"{{:{'+' if sign else ''}.{digits}f}}"
        return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"
    return "–" if math.isnan(score) else f"{score:.{digits}f}"


def _paper(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _filled(results: dict, setting: str) -> bool:
    return any(name in results["models"] and not name.startswith("sources/") for _, name, _ in TABLES[setting][1])


def _table(results: dict, setting: str) -> list[str]:
    title, rows = TABLES[setting]
    if not _filled(results, setting):
        return [f"### {title}", "", f"Not run in this configuration. To fill it: `{FILL[setting]}`", ""]
    header = ["model", *GEDIT_HEADERS.values(), "GEdit local", "GEdit global", "GEdit [95% CI]", "GenEval [95% CI]",
              "CLIP", "KID [CI]", "FID (floor)", "paper GEdit", "paper GenEval"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, name, paper_key in rows:
        model = results["models"].get(name)
        if model is None:
            continue
        theirs = paper.PAPER[setting].get(paper_key, (None, None)) if paper_key else (None, None)
        kid = f"{model['kid']:.3g} [{model['kid_ci'][0]:.3g}, {model['kid_ci'][1]:.3g}]"
        cats = [_fmt(model["gedit_by_category"].get(c), 2) for c in GEDIT_HEADERS]
        seeds = f" ({model['seeds']} seeds)" if model["seeds"] > 1 else ""
        lines.append("| " + " | ".join([
            label + seeds, *cats, _fmt(model["gedit_local"]["value"], 2), _fmt(model["gedit_global"]["value"], 2),
            _fmt(model["gedit"]), _fmt(model["geneval"]), _fmt(model["clip_score"]["value"], 1), kid,
            f"{model['fid']:.0f} ({model['fid_floor']:.0f})", _paper(theirs[0]), _paper(theirs[1])]) + " |")
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
             "GenEval-style: the parsed scene satisfies the prompt's spec), each with a two-level bootstrap 95% "
             "interval (training seeds, then prompts within categories); the paper's are VIEScore (GEdit, 0-10) "
             "and GenEval. Compare directions and ratios, not values. GEdit local is the mean of the four local "
             "categories, global of background and style. CLIP is the domain CLIP score of the T2I outputs. "
             "KID and FID are in the evaluator's feature space against a real reference set disjoint from the "
             "test targets (a student's: the mean over its seeds, and the span of their intervals); FID, a biased "
             "statistic, has no interval: its floor is what real images score at the same sample size.", ""]
    lines += _can_say(results["can_say"])
    for setting in TABLES:
        lines += _table(results, setting)
    lines += _realism(results["realism"]) + _diagnostic(results["models"]) + _claims(results["claims"])
    return "\n".join(lines) + "\n"


def _can_say(can: dict) -> list[str]:
    if not can.get("best_teacher"):
        return []
    silent = can["silent"]
    if not silent:
        return ["**What this run can say:** every edit category is passed by some teacher at least "
                f"{SILENT:.0%} of the time, so GEdit differences draw on all six.", ""]
    best = ", ".join(f"{GEDIT_HEADERS[c]} {can['best_teacher'].get(c, 0.0):.2f}" for c in silent)
    return [f"**What this run can and cannot say:** no teacher passes {', '.join(GEDIT_HEADERS[c] for c in silent)} "
            f"{SILENT:.0%} of the time (best teacher: {best}); there every student fails alike, so GEdit "
            "differences rest on the other categories (see GEdit local and global apart).", ""]


def _realism(realism: dict) -> list[str]:
    if not realism:
        return []
    lines = ["### Realism absorption (one route: the realism expert; students from base)", "",
             "| model | realism reward [95% CI] | gap closure [95% CI] | GenEval-style [95% CI] |",
             "|---|---|---|---|",
             f"| base (before) | {_fmt(realism['init'])} | 0 | {_fmt(realism['init_geneval'])} |"]
    for name, s in realism["students"].items():
        seeds = f" ({s['seeds']} seeds)" if s["seeds"] > 1 else ""
        lines.append(f"| {name}{seeds} | {_fmt(s['realism'])} | {_fmt(s['closure'])} | {_fmt(s['geneval'])} |")
    lines += [f"| realism expert (teacher) | {_fmt(realism['teacher'])} | 1 | {_fmt(realism['teacher_geneval'])} |", "",
              f"The paper closes {paper.PAPER_REALISM_CLOSURE:.1%} of the student-to-teacher realism gap.", ""]
    return lines


def _diagnostic(models: dict) -> list[str]:
    rows = [(n, m) for n, m in models.items() if n.startswith("diagnostic/")]
    if not any(m["student"] for _, m in rows):
        return ["### Diagnostic setting (t2i + local + global; the ablations)", "",
                f"Not run in this configuration. To fill it: `{FILL['diagnostic']}`", ""]
    lines = ["### Diagnostic setting (t2i + local + global; the ablations)", "",
             "| model | GEdit [95% CI] | GEdit local | GEdit global | GenEval [95% CI] | NFE |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {_fmt(m['gedit'])} | {_fmt(m['gedit_local']['value'], 2)} | {_fmt(m['gedit_global']['value'], 2)} "
              f"| {_fmt(m['geneval'])} | {m['nfe']:.0f} |" for n, m in rows]
    return lines + [""]


def _claims(claim_rows: list[dict]) -> list[str]:
    lines = ["### The paper's claims", "",
             "| | claim | score | a | b | a − b [paired 95% CI] | seeds a/b | verdict | CLIP a − b |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in claim_rows:
        if c["verdict"] == "not run":
            lines.append(f"| {c['id']} | {c['claim']} | {c['score']} | {c['a']} | {c['b']} | not run here | | not run | |")
            continue
        clip = _fmt(c["clip_difference"], 1, sign=True) if "clip_difference" in c else ""
        lines.append(f"| {c['id']} | {c['claim']} | {c['score']} | {_fmt(c['a_value']['value'])} "
                     f"| {_fmt(c['b_value']['value'])} | {_fmt(c['difference'], sign=True)} "
                     f"| {c['seeds'][0]}/{c['seeds'][1]} | **{c['verdict']}** | {clip} |")
    return lines + ["", "a − b is the paired difference (same prompts, same noise) with its two-level bootstrap "
                        "interval (training seeds of each model, then prompts within categories). A direction is "
                        "called only when that interval excludes 0; \"(1 seed)\" marks a verdict whose students "
                        "have one training seed, so that seed-to-seed noise is not in its interval.", ""]


FILES = ("results.md", "results.json", "scores.png")


def write(results: dict, out: Path) -> list[Path]:
    """`FILES` in `out`: the markdown report, the JSON behind it and the plot."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(results))
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    plot(results, out / "scores.png")
    return [out / name for name in FILES]


def plot(results: dict, path: Path) -> None:
    """GEdit and GenEval with their intervals for the rows of the tables this run filled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    filled = [s for s in TABLES if _filled(results, s)] or list(TABLES)[:1]
    fig, axes = plt.subplots(1, len(filled), figsize=(7 * len(filled), 3.8), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], filled):
        title, rows = TABLES[setting]
        shown = [(label.strip("*"), results["models"][name]) for label, name, _ in rows if name in results["models"]]
        for i, key in enumerate(("gedit", "geneval")):
            xs = [x + 0.4 * i for x in range(len(shown))]
            values = [m[key]["value"] for _, m in shown]
            ax.bar(xs, values, width=0.4, yerr=_errors([m[key] for _, m in shown]), capsize=2,
                   label={"gedit": "GEdit", "geneval": "GenEval"}[key])
        ax.set_xticks([x + 0.2 for x in range(len(shown))], [label for label, _ in shown], rotation=35, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("success rate (95% CI)")
    axes[0][0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _errors(scores: Sequence[dict]) -> np.ndarray:
    """(2, N) distances from each value down and up to its interval (0 when there is none)."""
    lo = [max(0.0, s["value"] - s["ci"][0]) if not math.isnan(s["ci"][0]) else 0.0 for s in scores]
    hi = [max(0.0, s["ci"][1] - s["value"]) if not math.isnan(s["ci"][1]) else 0.0 for s in scores]
    return np.asarray([lo, hi])


def main() -> None:
    """Recompute every interval and verdict from the kept outcomes: `python -m pipeline.report`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--eval", type=Path, default=Path("data/metrics/eval"))
    parser.add_argument("--outcomes", type=Path, default=Path("data/outcomes"))
    parser.add_argument("--evaluator", type=Path, default=Path("data/metrics/evaluator.json"))
    parser.add_argument("--router", type=Path, default=Path("data/metrics/router.json"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=None, help="write the report's files here (default: print)")
    args = parser.parse_args()
    params = config.load(args.params)
    results = collect(args.eval, args.outcomes, args.evaluator, args.router, params.settings, params.fields)
    if args.out is not None:
        write(results, args.out)
    print(markdown(results))


if __name__ == "__main__":
    main()
