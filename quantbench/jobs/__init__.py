"""Running a grid's jobs: the plan (every job's identity), a job's spec, and the runner that is
the body of each Snakemake job (reference, cell, batch of cells)."""
