# The cell jobs, one rule per shape of job (config `batch`, Config.batches): `cell` computes one
# cell (method and budget are wildcards); `cells_<method>` the budgets of one method; `cells`
# every cell of one reference. Each cell keeps its own outputs, log and MLflow run either way.
# A cell's output is its result, metrics.json (status ok, or diverged: a result without a model);
# its model.qbc is written beside it when there is a model, and recorded in MLflow, but is not
# declared: Snakemake has no optional outputs (docs/architecture.md).
# A batch job's command names its cells (--batch, common.smk batch_job) with one digest of them
# all: the job reads the cells and where their outputs and logs go from the plan (Plan.batch), so
# the command stays short. Rule `cell` keeps the command it always had (--job, --out, --log):
# Snakemake reruns a job whose command text changed, and a one-cell job computes again.
_CELL = (
    "{params.launch}quantbench cell --plan {params.plan:q} --job {params.jobs} --digest {params.digest}"
    " --reference {input.reference:q}"
    " --out {output.metrics:q} --log {log:q} --threads {threads}"
    " {params.launch_args}"
)
_BATCH = (
    "{params.launch}quantbench cell --plan {params.plan:q} --batch {params.jobs:q} --digest {params.digest}"
    " --reference {input.reference:q} --threads {threads} {params.launch_args}"
)


for _batch in CFG.batches():

    rule:
        name:
            _batch.rule
        input:
            reference=lambda wc: reference_file(wc.task, wc.arch, wc.seed),
        output:
            metrics=batch_files(_batch, "metrics.json"),
        log:
            batch_files(_batch, ".log"),
        params:
            plan=PLAN,  # the same for every job of the grid (where its results live)
            launch=launch,
            launch_args=launch_args,
            jobs=lambda wc, batch=_batch: batch_job(wc, batch),  # the cell's id, or the batch's name
            digest=lambda wc, batch=_batch: batch_digest(wc, batch),
        threads: rule_resource(CFG.raw, "cell", "threads")
        priority: 1  # a reference's cells start as soon as it is ready, before the next reference: long jobs first
        resources:
            **job_resources("cell", cells=len(_batch.members)),
        shell:
            _CELL if _batch.rule == "cell" else _BATCH
