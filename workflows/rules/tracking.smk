rule tracking:
    """Create the MLflow store and the experiment once, before any job writes to it."""
    output:
        f"{RUNS}/tracking.json",
    log:
        f"{LOGS}/tracking.log",
    params:
        experiment=EXP,
        results=lambda wildcards, output: RESULTS,
        uri=lambda wildcards, output: TRACKING_URI_ARG,
    shell:
        "quantbench tracking --experiment {params.experiment:q} --results-dir {params.results:q} {params.uri}"
        " --out {output:q} > {log:q} 2>&1"
