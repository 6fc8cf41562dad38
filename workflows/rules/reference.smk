rule reference:
    """Train the full-precision reference of (task, arch, seed), or reuse its cached checkpoint."""
    output:
        f"{RUNS}/{{task}}/{{arch}}/reference/s{{seed}}/metrics.json",
    log:
        f"{LOGS}/{{task}}/{{arch}}/reference/s{{seed}}.log",
    params:
        plan=PLAN,  # the same for every job of the grid (where its results live)
        launch=launch,
        launch_args=launch_args,
        job=reference_job,
        digest=lambda wildcards: the_plan().digests[reference_job(wildcards)][:16],
    threads: rule_resource(CFG.raw, "reference", "threads")
    resources:
        **job_resources("reference"),
    shell:
        "{params.launch}quantbench reference --plan {params.plan:q} --job {params.job:q} --digest {params.digest}"
        " --out {output:q} --log {log:q}"
        " --threads {threads} {params.launch_args}"
