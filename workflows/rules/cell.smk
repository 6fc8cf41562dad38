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
        launch=launch,
        launch_args=launch_args,
        spec=cell_spec,
    threads: CFG.rule_resource("cell", "threads")
    resources:
        **job_resources("cell"),
    shell:
        "{params.launch}quantbench cell --spec {params.spec:q} --context {params.context:q} --reference {input.reference:q}"
        " --out {output.metrics:q} --artifact {output.artifact:q} --log {log:q} --threads {threads}"
        " {params.launch_args}"
