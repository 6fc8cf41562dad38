rule cell:
    """Compress one reference with one method at one budget; evaluate the packed artifact."""
    input:
        tracking=rules.tracking.output,
        reference=lambda wc: reference_file(wc.task, wc.arch, wc.seed),
    output:
        metrics=f"{RUNS}/{{task}}/{{arch}}/{{method}}/b{{budget}}/s{{seed}}/metrics.json",
        artifact=f"{RUNS}/{{task}}/{{arch}}/{{method}}/b{{budget}}/s{{seed}}/model.qbc",
    log:
        f"{LOGS}/{{task}}/{{arch}}/{{method}}/b{{budget}}/s{{seed}}.log",
    params:
        context=context,
        spec=cell_spec,
    threads: CFG.rule_resource("cell", "threads")
    resources:
        mem_mb=CFG.rule_resource("cell", "mem_mb"),
        runtime=CFG.rule_resource("cell", "runtime"),
        gpu=CFG.rule_resource("cell", "gpu"),
    shell:
        "quantbench cell --spec {params.spec:q} --context {params.context:q} --reference {input.reference:q}"
        " --out {output.metrics:q} --artifact {output.artifact:q} --log {log:q} --threads {threads}"
