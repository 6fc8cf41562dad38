# quantbench: methods x archs x budgets x seeds -> compressed artifacts -> MLflow -> tables.
# Run: snakemake --cores 2                       (the default grid, workflows/config/default.yaml)
#      snakemake --cores 2 --configfile G.yaml   (grid G alone, plus the schema's defaults)
from snakemake.utils import min_version

min_version("9.0")


# A grid file stands alone: `configfile:` would merge a --configfile into the default grid key by
# key, so the default grid is loaded only when no config file is given. --config overrides apply
# on top of either.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "workflows/config/default.yaml")


include: "workflows/rules/common.smk"
include: "workflows/rules/reference.smk"
include: "workflows/rules/cell.smk"
include: "workflows/rules/tables.smk"


localrules:
    all,
    tables,


rule all:
    default_target: True
    input:
        # every cell is a target itself: a cell whose output is missing (failed, removed) is planned
        # again even when the tables are newer (Snakemake does not rebuild a missing intermediate)
        [cell_file(c) for c in CFG.cells],
        table_files(),
        claims_files("md"),
        plot_files("png"),


onstart:
    # before any job is submitted (never in a dry run): on a cluster, paper-scale training on CPUs is
    # refused unless the grid says allow_cpu; one grid per results directory (a lock held until this
    # process exits); then the plan every job reads its identity from, and its record in the MLflow
    # experiment (which this creates once, before any job writes to it)
    check_executor()
    hold_results_lock()
    write_plan()


onsuccess:
    # a line per cell whose method diverged (its result, which the tables show as such)
    end_of_grid(failed=False)
    release_results_lock()


onerror:
    # a grid that ends with failed cells (--keep-going) still gets tables and plots that mark them,
    # and a line naming each failed cell and its log
    end_of_grid(failed=True)
    release_results_lock()
