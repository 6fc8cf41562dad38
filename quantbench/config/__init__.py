"""A grid's config: read and validated (:mod:`.reading`), the cells it plans (:mod:`.grid`), and what
its jobs ask the scheduler for (:mod:`.resources`). What each job computes is the plan's
(:mod:`quantbench.jobs.plan`)."""

from quantbench.config.grid import TRAIN_SIZES, Batch, Cell, Config, label_params, load_config
from quantbench.config.reading import merged_config, read_yaml, task_archs, typed_overrides
from quantbench.config.resources import PAPER_SCALE_TASKS

__all__ = ["PAPER_SCALE_TASKS", "TRAIN_SIZES", "Batch", "Cell", "Config", "label_params", "load_config",
           "merged_config", "read_yaml", "task_archs", "typed_overrides"]
