"""Redis key names, in one place (see the package docstring for the layout)."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "sdw"

    def queue(self, model: str) -> str:
        return f"{self.prefix}:q:{model}"

    @property
    def queued(self) -> str:
        return f"{self.prefix}:queued"

    def queued_model(self, model: str) -> str:
        return f"{self.prefix}:queued:{model}"

    def watched(self, model: str) -> str:
        """Queued jobs of ``model`` somebody watches: the only ones told their new position (scripts.WATCH)."""
        return f"{self.prefix}:watchq:{model}"

    @property
    def models(self) -> str:
        """Every model a job was ever queued for (what the queue-timeout sweep and the gauges look at)."""
        return f"{self.prefix}:qmodels"

    @property
    def registered(self) -> str:
        """Worker id -> its last registry record; kept 24 h after it stops, so a fleet scaled to zero
        still accepts jobs for its models, checked against that worker's limits."""
        return f"{self.prefix}:registered"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:ev"

    def preview(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:pv"

    def image(self, job_id: str, index: int) -> str:
        return f"{self.prefix}:job:{job_id}:img:{index}"

    def watchers(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:w"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def webhook_jobs(self) -> str:
        """Jobs whose webhooks are not all sent yet, by creation time (stores/redis/webhooks.py)."""
        return f"{self.prefix}:wh:jobs"

    def webhook_lease(self, job_id: str) -> str:
        return f"{self.prefix}:wh:lease:{job_id}"

    def webhooks(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:wh"

    def owner_queued(self, owner: str) -> str:
        """An owner's jobs submitted while it has a ``max_queued`` quota (pruned when counted)."""
        return f"{self.prefix}:owner:{owner}:queued"

    def owner_rate(self, owner: str) -> str:
        """An owner's submits of the last minute, by time (its ``rate`` quota)."""
        return f"{self.prefix}:owner:{owner}:rate"

    @property
    def deadlines(self) -> str:
        """Jobs with a deadline, scored by it (epoch seconds): API nodes end those past it."""
        return f"{self.prefix}:deadlines"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def idempotency(self, owner: str | None, key: str) -> str:
        return f"{self.prefix}:idem:{owner or '-'}:{key}"

    def tokenizer(self, sha256: str) -> str:
        """A model's prompt tokenizer as ``tokenizers`` JSON, stored by workers for API nodes."""
        return f"{self.prefix}:tokenizer:{sha256}"

    @property
    def models_refresh(self) -> str:
        """When an API node last asked the workers to rescan their model folders (epoch seconds)."""
        return f"{self.prefix}:models:refresh"

    @property
    def control(self) -> str:
        return f"{self.prefix}:ctl"

    @property
    def results_expiry(self) -> str:
        """Result objects in the bucket (``--results-s3``), scored by when their job expires: API nodes
        delete those past it (stores/redis/results.py)."""
        return f"{self.prefix}:results:expiry"
