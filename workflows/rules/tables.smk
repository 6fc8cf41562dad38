rule tables:
    """Regenerate the per-task tables from the MLflow record (not from the files below)."""
    input:
        references=sorted({reference_file(c.task, c.arch, c.seed) for c in CFG.cells}),
        cells=[cell_file(c) for c in CFG.cells],
    output:
        table_files(),
    log:
        f"{LOGS}/tables.log",
    params:
        experiment=EXP,
        results=lambda wildcards, output: Path(output[0]).parents[2],
        uri=TRACKING_URI_ARG,
        out_dir=lambda wildcards, output: Path(output[0]).parent,
    conda:
        "../../environment.yml"
    shell:
        "quantbench tables --experiment {params.experiment} --results-dir {params.results} {params.uri}"
        " --out-dir {params.out_dir} > {log} 2>&1"
