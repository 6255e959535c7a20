"""Built-in grid cell kinds, one module each; they register in `slim.harness.grid.kinds.cell_kinds` on import."""
