# The cell jobs, one rule per shape of job (config `batch`, Config.batches): `cell` computes one
# cell (method and budget are wildcards); `cells_<method>` the budgets of one method; `cells`
# every cell of one reference. Each cell keeps its own outputs, log and MLflow run either way.
for _batch in CFG.batches():

    rule:
        name:
            _batch.rule
        input:
            tracking=rules.tracking.output,
            reference=lambda wc: reference_file(wc.task, wc.arch, wc.seed),
        output:
            metrics=batch_files(_batch, "metrics.json"),
            artifact=batch_files(_batch, "model.qbc"),
        log:
            batch_files(_batch, ".log"),
        params:
            context=context,
            launch=launch,
            launch_args=launch_args,
            spec=lambda wc, batch=_batch: batch_spec(wc, batch),
        threads: CFG.rule_resource("cell", "threads")
        priority: 1  # a reference's cells start as soon as it is ready, before the next reference: long jobs first
        resources:
            **job_resources("cell", cells=len(_batch.members)),
        shell:
            "{params.launch}quantbench cell --spec {params.spec:q} --context {params.context:q} --reference {input.reference:q}"
            " --out {output.metrics:q} --artifact {output.artifact:q} --log {log:q} --threads {threads}"
            " {params.launch_args}"
