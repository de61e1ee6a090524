"""Signed webhooks, by the Standard Webhooks specification (the one Replicate uses): per-owner secrets
derived from the server's ``--webhook-secret``, signatures, safe targets (no server-side request
forgery) and one delivery attempt. Torch-free; when and how often to deliver is the job layer's."""
