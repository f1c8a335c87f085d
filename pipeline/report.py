"""The comparison table (the shape of the paper's Table 2) and its plots, from the metrics JSONs."""
from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.data import world

GEDIT_HEADERS = {"subject_add": "subj-add", "subject_replace": "subj-rep", "background_change": "bg-chg",
                 "style_change": "style-chg", "colour_alter": "color-alt", "subject_remove": "subj-rem"}
COLUMNS = [("gedit", "GEdit"), ("geneval", "GenEval"), ("fid", "FID ↓"), ("clip_score", "CLIP"),
           ("preservation", "PSNR keep"), ("realism", "realism"), ("nfe", "NFE"), ("sec_per_image", "ms/img")]


def model_order(experts, methods) -> list[tuple[str, str]]:
    """(group, model) rows: the sources, the routed teacher, the baselines, then each student."""
    return ([("source", "base")] + [("source", e) for e in experts]
            + [("teacher", "teacher"), ("teacher", "teacher_cfg"), ("baseline", "joint"), ("baseline", "merge")]
            + [("student", m) for m in methods])


def collect(order: list[tuple[str, str]], eval_dir: Path, evaluator: Path, router: Path, fields) -> dict:
    """Everything the report shows, as one JSON-able dict (models without metrics are skipped).

    `eval_dir` holds one `<model>.json` per evaluated model; `evaluator` and `router` are their
    stages' metrics files; `fields` says whether (and at which scale) CFG was absorbed.
    """
    rows = []
    for group, name in order:
        path = eval_dir / f"{name}.json"
        if path.exists():
            rows.append({"model": name, "group": group} | json.loads(path.read_text()))
    read = lambda path: json.loads(path.read_text()) if path.exists() else {}  # noqa: E731
    return {"evaluator": read(evaluator), "router": read(router), "models": rows,
            "cfg_absorbed": fields.absorb_guidance, "cfg_scale": fields.guidance_scale}


FILES = ("results.md", "results.json", "scores.png")


def write(results: dict, out: Path) -> list[Path]:
    """`FILES` in `out`: the markdown table, the JSON behind it and the plot."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(results))
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    plot(results, out / "scores.png")
    return [out / name for name in FILES]


def _fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "sec_per_image":
        return f"{value * 1e3:.1f}"
    if key in ("fid", "clip_score", "preservation"):
        return f"{value:.1f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(results: dict) -> str:
    """The table as markdown, headed by the evaluator's accuracy (without it the scores mean nothing)."""
    ev, router = results["evaluator"], results["router"]
    lines = ["# Results", "",
             f"Evaluator scene accuracy on held-out renders: **{ev.get('scene_accuracy', float('nan')):.4f}** "
             f"(metrics are meaningful only at ≥ 0.99). Router test accuracy: "
             f"{router.get('test_accuracy', float('nan')):.3f} from {router.get('labelled', '?')} labels.",
             "", "Edit success (parsed output == target scene) per GEditBench-style category, their mean "
             "(GEdit), the GenEval-style score, FID and CLIP score in the evaluator's spaces.", ""]
    header = ["model", "group", *GEDIT_HEADERS.values(), *(h for _, h in COLUMNS)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["models"]:
        cats = [_fmt("", row["gedit_by_category"].get(c)) for c in GEDIT_HEADERS]
        cols = [_fmt(k, row.get(k)) for k, _ in COLUMNS]
        lines.append("| " + " | ".join([f"`{row['model']}`", row["group"], *cats, *cols]) + " |")
    lines += ["", "GenEval-style per category:", "",
              "| model | " + " | ".join(world.T2I_CATEGORIES) + " |", "|" + "---|" * 7]
    for row in results["models"]:
        lines.append(f"| `{row['model']}` | " + " | ".join(_fmt("", row["geneval_by_category"].get(c))
                                                            for c in world.T2I_CATEGORIES) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Grouped bars of GEdit and GenEval per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["models"]
    names = [r["model"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows)), 3.6))
    for i, (key, label) in enumerate([("gedit", "GEdit (edit success)"), ("geneval", "GenEval-style")]):
        ax.bar([x + 0.4 * i for x in range(len(rows))], [r[key] for r in rows], width=0.4, label=label)
    ax.set_xticks([x + 0.2 for x in range(len(rows))], names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(loc="upper left", ncols=2)
    ax.set_title("Capabilities per model (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
