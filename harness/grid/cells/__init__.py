"""Built-in grid cell kinds, one module each; they register in `harness.grid.kinds.cell_kinds` on import."""
