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
        spec=reference_spec,
    threads: CFG.rule_resource("reference", "threads")
    resources:
        mem_mb=CFG.rule_resource("reference", "mem_mb"),
        runtime=CFG.rule_resource("reference", "runtime"),
        gpu=CFG.rule_resource("reference", "gpu"),
    shell:
        "quantbench reference --spec {params.spec:q} --context {params.context:q} --out {output:q} --log {log:q}"
        " --threads {threads}"
