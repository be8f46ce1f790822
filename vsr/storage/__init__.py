"""Where bytes live: paths of outputs and work directories, atomic writes, file digests and the
one-job-per-output lock. The bottom layer: imports nothing of vsr but vsr.errors."""
