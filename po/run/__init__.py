"""One job from a composed config, top to bottom: validation (validate.py, values.py), the run directory (paths.py,
lock.py, rundir.py, jobfiles.py), building what trains (build.py, refcache.py), the job itself (job.py), the final
model (export.py), multi-process and Slurm glue (distributed.py, launch.py) and provenance (provenance.py)."""
