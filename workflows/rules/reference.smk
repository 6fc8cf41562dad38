rule reference:
    """Train the full-precision reference of (task, arch, seed), or reuse its cached checkpoint."""
    input:
        rules.tracking.output,
    output:
        f"{RUNS}/{{task}}/{{arch}}/reference/s{{seed}}/metrics.json",
    log:
        f"{LOGS}/{{task}}/{{arch}}/reference/s{{seed}}.log",
    params:
        context=context,
        launch=launch,
        launch_args=launch_args,
        spec=reference_spec,
    threads: CFG.rule_resource("reference", "threads")
    resources:
        **job_resources("reference"),
    shell:
        "{params.launch}quantbench reference --spec {params.spec:q} --context {params.context:q} --out {output:q} --log {log:q}"
        " --threads {threads} {params.launch_args}"
