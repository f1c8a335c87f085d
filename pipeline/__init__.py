"""DanceOPD pipeline library: one concept per module (see DESIGN.md §3)."""
