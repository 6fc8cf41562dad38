rule tracking:
    """Create the MLflow store and the experiment once, before any job writes to it."""
    output:
        f"{RUNS}/tracking.json",
    log:
        f"{LOGS}/tracking.log",
    params:
        experiment=EXP,
        results=lambda wildcards, output: Path(output[0]).parents[2],
        uri=TRACKING_URI_ARG,
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../environment.yml"
    shell:
        "quantbench tracking --experiment {params.experiment} --results-dir {params.results} {params.uri}"
        " --out {output} > {log} 2>&1"
