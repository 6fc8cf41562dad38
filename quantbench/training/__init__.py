"""Training, shared by the reference and the training methods: the one schedule (Schedule) and
the epoch loop (several processes per job: :mod:`quantbench.distributed`)."""
