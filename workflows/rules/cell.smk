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
    threads: CFG["threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../../environment.yml"
    shell:
        "quantbench cell --spec {params.spec:q} --reference {input.reference} --out {output} --log {log}"
        " --threads {threads} > {log} 2>&1"
