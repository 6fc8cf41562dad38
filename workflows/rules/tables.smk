rule tables:
    """Regenerate the per-task tables and plots from the MLflow record (not from the files below)."""
    input:
        references=sorted({reference_file(c.task, c.arch, c.seed) for c in CFG.cells}),
        cells=[cell_file(c) for c in CFG.cells],
    output:
        tables=table_files(["md", "tex"]),
        csv=[report(f, category="tables") for f in table_files(["csv"])],
        plots=[report(f, category="plots") for f in plot_files("png")],
        plots_pdf=plot_files("pdf"),
    log:
        f"{LOGS}/tables.log",
    params:
        experiment=EXP,
        results=lambda wildcards, output: Path(output.tables[0]).parents[2],
        uri=TRACKING_URI_ARG,
        out_dir=lambda wildcards, output: Path(output.tables[0]).parent,
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../environment.yml"
    shell:
        "quantbench tables --experiment {params.experiment} --results-dir {params.results} {params.uri}"
        " --out-dir {params.out_dir} > {log} 2>&1"
