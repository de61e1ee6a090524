"""Where jobs are kept, side by side: ``memory`` (dicts, this process only), ``sqlite`` (the durable
default of ``sdworker serve``, in ``--data-dir``) and ``redis`` (a fleet of API nodes and workers).

The memory and SQLite stores only persist (``sdworker.jobs.store.JobStore``); the job's life is
written once, in ``sdworker.jobs.service.LocalJobService``. The Redis store still carries its own
``JobService``/``JobSource`` pair (its transitions run as Lua scripts inside Redis)."""
