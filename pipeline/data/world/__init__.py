"""ShapesEdit: the procedural image world with exact ground truth (DESIGN.md §4).

Conventions (this package owns them; its modules: `scene`, `rendering`, `prompts`, `edits`, `samples`):

- Canvas: ``size``x``size`` RGB uint8 (default 32), split into a 2x2 grid of cells. Cells are
  indexed row-major: 0 top left, 1 top right, 2 bottom left, 3 bottom right; row = cell // 2,
  col = cell % 2. `cell_box` gives a cell's pixel box. A cell is empty (None) or holds one `Obj`
  (a shape of `SHAPES` in a colour of `COLORS`); a scene has a background of `BACKGROUNDS` and a
  style. Generated scenes hold 1 to 3 objects.
- Geometry: every shape lies inside its cell with a margin of size/16 px, so a change to one
  cell never touches pixels outside its `cell_box`. circle = disk, square = filled square,
  triangle = filled upward triangle (apex at the top).
- Styles: ``plain`` flat colours; ``invert`` 255 - rgb; ``grayscale`` luminance
  0.299R + 0.587G + 0.114B on all channels; ``outline`` each object as a ~size/16 px outline in
  its colour; ``real`` (the realism mode) x4 supersampled anti-aliased edges, a soft radial
  shading over each object and a fixed low-amplitude texture (its seed is a constant, so
  rendering stays a pure function of the scene).
- Palette: object luminances are pairwise >= 25 apart and >= 25 from every background's
  (the grayscale style stays exactly parseable); objects are >= 100 from backgrounds in RGB, and
  an inverted object colour is >= 60 from every plain one (invert stays tellable from plain).
- Spec of a T2I prompt: ``{"category": c, "objects": [desc, ...], ...}`` where a desc is
  ``{"shape": s}`` plus ``"color"`` only if the prompt states it; any spec may carry
  ``"background"``. Rules (`check_spec`):
  single:      exactly one object in the scene, matching objects[0];
  two:         exactly two objects, matching the two descs one-to-one;
  count:       exactly spec["count"] objects match objects[0] (a shape; others may be present);
  colour:      some object matches objects[0] (shape and colour);
  position:    some object matching objects[0] is spec["relation"] ("left of", "right of",
               "above", "below") another matching objects[1]: left of = smaller col, above =
               smaller row;
  colour_attr: two distinct objects match the two descs.
- Samples: a pure function of (bucket, category, seed) through `random.Random(seed)`. Split and
  bucket seed ranges are disjoint (`SPLIT_BASE` + `BUCKET_BASE` + index); the `reference` split is
  never curated: the evaluator renders it as KID's and FID's real set, disjoint from every test target. Realism samples are T2I
  samples rendered in style ``real``. Local edits change exactly one cell of a plain source and
  refer to the object by position, or by attributes only when those are unique in the source.
"""
from pipeline.data.world.scene import (BACKGROUNDS, BUCKETS, BUCKET_BASE, BUCKET_TASK, CATEGORIES, COLORS,
                                       EDIT_CATEGORIES, EDIT_STYLES, GLOBAL_EDIT_CATEGORIES,
                                       LOCAL_EDIT_CATEGORIES, LUMA, Obj, POSITIONS, RELATIONS, ROUTE_BUCKETS, SHAPES,
                                       SPLIT_BASE, STYLES, Scene, T2I_CATEGORIES, TASKS, cell_box)
from pipeline.data.world.rendering import render
from pipeline.data.world.prompts import check_spec, describe
from pipeline.data.world.edits import edited_cells
from pipeline.data.world.samples import Sample, make_bucket, make_sample
