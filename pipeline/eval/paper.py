"""What the paper reports (arXiv 2606.27377; ../shared/PAPER.md §3): the values of Tables 2A and 2B
the report sets ours beside, and the claims it decides, each "model a is better than model b on a
score" between two of this pipeline's evaluated models."""
from __future__ import annotations

# §3.1-3.2: (GEdit VIEScore average, GenEval overall); None where the paper gives none.
PAPER = {
    "t2i_edit": {"t2i_source": (None, 0.832), "edit_source": (4.930, 0.711), "joint": (4.617, 0.808),
                 "merge": (None, 0.836), "offpolicy": (4.528, 0.818), "diffusionopd": (4.947, 0.833),
                 "danceopd": (5.347, 0.849)},
    "local_global": {"local_source": (5.095, 0.793), "global_source": (3.750, 0.808), "joint": (4.546, 0.821),
                     "merge": (4.715, 0.811), "offpolicy": (4.736, 0.798), "diffusionopd": (4.661, 0.822),
                     "danceopd": (5.498, 0.848)},
}
PAPER_REALISM_CLOSURE = 0.853
_BASELINES = {"t2i_edit": [("diffusionopd", "DiffusionOPD"), ("offpolicy", "off-policy distillation"),
                           ("joint", "joint training"), ("merge", "weight merge")],
              "local_global": [("diffusionopd", "DiffusionOPD"), ("offpolicy", "off-policy distillation"),
                               ("joint", "joint training"), ("merge", "weight merge")]}
_SOURCES = {"t2i_edit": {"gedit": [("sources/edit", "edit_source", "its edit source")],
                         "geneval": [("sources/base", "t2i_source", "its T2I source")]},
            "local_global": {"gedit": [("sources/local_edit", "local_source", "its local-edit source"),
                                       ("sources/global_edit", "global_source", "its global-edit source")],
                             "geneval": [("sources/local_edit", "local_source", "its local-edit source"),
                                         ("sources/global_edit", "global_source", "its global-edit source")]}}


def _paper_claims() -> list[tuple[str, str, str, str, str]]:
    """(id, statement, model a, model b, score): DanceOPD against every baseline and source of Tables
    2A and 2B on GEdit and on GenEval (the paper: best on both), then realism and the ablations."""
    out = []
    for setting, table in (("t2i_edit", "2A"), ("local_global", "2B")):
        paper, dance, rows = PAPER[setting], f"{setting}/danceopd", []
        for score, column, label in (("gedit", 0, "edits better than"), ("geneval", 1, "has a higher GenEval than")):
            rivals = [(f"{setting}/{m}", m, what) for m, what in _BASELINES[setting]] + _SOURCES[setting][score]
            for b, key, what in rivals:
                theirs = paper.get(key, (None, None))[column]
                value = "collapses editing" if theirs is None else f"{theirs:.3f}"
                rows.append((f"DanceOPD {label} {what} ({paper['danceopd'][column]:.3f} vs {value})", dance, b, score))
        out += [(f"{table}-{i}", *row) for i, row in enumerate(rows, 1)]
    out += [
        ("R-1", "On-policy absorbs more realism than off-policy (≈0.30 vs ≈0.27)", "realism/danceopd",
         "realism/offpolicy", "realism"),
        ("D-1", "Hard routing beats soft mixing (5.751 vs 4.994)", "diagnostic/danceopd", "diagnostic/soft", "gedit"),
        ("D-2", "One route per update beats routes mixed in a batch (K1G1 5.751 vs K1G3 5.485, if G is this)",
         "diagnostic/danceopd", "diagnostic/per_sample", "gedit"),
        ("D-3", "A low-noise query beats a mid-noise one (Fig. 6 left)", "diagnostic/danceopd",
         "diagnostic/query_mid", "gedit"),
        ("D-4", "A low-noise query beats a high-noise one (Fig. 6 left)", "diagnostic/danceopd",
         "diagnostic/query_high", "gedit"),
        ("D-5", "One query per rollout beats K = 4 (Fig. 6 right)", "diagnostic/danceopd", "diagnostic/k4", "gedit"),
    ]
    return out


CLAIMS = _paper_claims()
