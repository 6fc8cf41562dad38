# quantbench: methods x archs x budgets x seeds -> compressed artifacts -> MLflow -> tables.
# Run: snakemake --cores 2   (config: workflows/config/default.yaml; override with --configfile)
from snakemake.utils import min_version

min_version("9.0")


configfile: "workflows/config/default.yaml"


include: "workflows/rules/common.smk"
include: "workflows/rules/tracking.smk"
include: "workflows/rules/reference.smk"
include: "workflows/rules/cell.smk"
include: "workflows/rules/tables.smk"


rule all:
    default_target: True
    input:
        table_files(),
        plot_files("png"),


onerror:
    # a grid that ends with failed cells (--keep-going) still gets tables that mark them
    shell(
        f"mkdir -p {LOGS} && quantbench tables --experiment {EXP} --results-dir {RESULTS} {TRACKING_URI_ARG}"
        f" > {LOGS}/tables-onerror.log 2>&1 || true"
    )
