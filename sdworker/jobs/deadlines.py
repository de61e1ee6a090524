"""A job's deadline (``deadline_seconds`` in the body, or the ``Cancel-After`` header): a job not finished
by then ends ``cancelled`` with this code, whether it was still queued or already running, in every
store (``jobs/service.py`` with a timer per job; Redis: ``P:deadlines`` swept by every API node)."""

DEADLINE_EXCEEDED = "deadline_exceeded"
DEADLINE_MESSAGE = "the job did not finish within its deadline (deadline_seconds / Cancel-After)"
