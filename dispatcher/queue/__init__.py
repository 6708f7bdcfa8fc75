"""The queue layer: every Redis call of dispatcher lives in this package and nowhere else."""
