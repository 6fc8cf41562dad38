rule cell:
    """Compress one reference with one method at one budget; evaluate the packed artifact."""
    input:
        tracking=rules.tracking.output,
        reference=lambda wc: reference_file(wc.task, wc.arch, wc.seed),
    output:
        f"{RUNS}/{{task}}/{{arch}}/{{method}}/b{{budget}}/s{{seed}}/metrics.json",
    log:
        f"{LOGS}/{{task}}/{{arch}}/{{method}}/b{{budget}}/s{{seed}}.log",
    params:
        spec=cell_spec,
    threads: CFG.rule_resource("cell", "threads")
    resources:
        mem_mb=CFG.rule_resource("cell", "mem_mb"),
        runtime=CFG.rule_resource("cell", "runtime"),
        gpu=CFG.rule_resource("cell", "gpu"),
    conda:
        "../../environment.yml"
    shell:
        "quantbench cell --spec {params.spec:q} --reference {input.reference} --out {output} --log {log}"
        " --threads {threads} > {log} 2>&1"
