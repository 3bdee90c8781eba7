"""`selfalign run`: the self-alignment loop and everything that runs it.

- loop.py: the stage tables and `run` (read it first: the algorithm, top to bottom).
- executor.py: `Stage`, `Step` and the one executor that runs, skips and resumes steps.
- stages.py: each stage's work, a function of its step.
- results.py: the manifest and each stage's result model: where a stage's result lives and who reads it.
- engine_server.py: the run's engine server (sampling and evaluation jobs) and the client the stages call.
- stage_runner.py: the other stages as `selfalign <command> --config FILE` subprocesses.
- lock.py, children.py: one run per folder; the processes a run starts end with it.
- display.py, reporting.py, health.py: what the run prints, report.md and its plot, each iteration's health.
- curriculum.py: which prompts an iteration samples; job_cache.py: the base model's engine jobs across runs.
"""
