"""The compat front doors: OpenAI's Images API (``/v1/images/*``) and AUTOMATIC1111's ``/sdapi/v1``.

Thin translators over the same ``JobService`` as ``/v1/jobs``: a compat request becomes an ordinary
``JobDraft`` (same queue, limits, cancel, metrics, listing and native SSE stream), and the job's
events are rendered in the dialect's shape. No second queue, no second engine path. Error bodies
take each dialect's shape in ``sdworker.api.errors`` (chosen by path).
"""
