"""The one error hierarchy of sdworker.

Every error the service reports on purpose is a ``SdworkerError``: it carries a stable ``code`` (what
clients match on), an ``http_status`` and a ``message`` that is safe to show a user. The HTTP layer
maps it to a JSON body in one exception handler; once an SSE stream has started, the same error
travels as the terminal ``error`` event with the same ``code``. The CLI prints ``message`` on one line
and exits non-zero. Anything that is not a ``SdworkerError`` is our bug: it is logged with its
traceback and reported as ``internal_error`` (500), never blamed on the client.

Tree::

    SdworkerError (internal_error, 500)
    ├── InvalidRequest (invalid_request, 422)       a field's value is wrong; ``field`` names it
    │   ├── InvalidImage (invalid_image, 422)        base64 or image bytes that do not decode
    │   ├── ImageTooLarge (image_too_large, 413)     declared pixel count above the limit
    │   ├── TooLarge (too_large, 413)                width x height above the worker's --max-pixels
    │   ├── UnknownScheduler (unknown_scheduler, 422)
    │   ├── Unsupported (unsupported, 422)           a known field we do not implement
    │   ├── WrongWorker (wrong_worker, 422)          rbee's ``worker_id`` names another worker
    │   ├── LoraNotFound (lora_not_found, 404)       a LoRA name not in --lora-dir
    │   ├── LoraIncompatible (lora_incompatible, 422) a LoRA for another architecture than the model's
    │   ├── ControlNetNotFound (controlnet_not_found, 404) a ControlNet name not in --controlnet-dir
    │   ├── IpAdapterNotFound (ip_adapter_not_found, 404) an IP-Adapter name not in --ip-adapter-dir
    │   └── ModelTooLarge (model_too_large, 422)     a model bigger than --max-loaded-bytes even alone
    ├── BodyTooLarge (body_too_large, 413)
    ├── JobNotFound (job_not_found, 404)
    ├── ModelNotFound (model_not_found, 404)        a model name not in the library / no live worker serves it
    ├── JobNotFinished (job_not_finished, 409)       e.g. the image of a job still running
    ├── QueueFull (queue_full, 429)                  with ``retry_after_seconds``
    │   └── QuotaExceeded (quota_exceeded, 429)      a key's max_queued or rate; ``field`` names the quota
    ├── NotReady (not_ready, 503)                    model loading, worker dead, shutting down, Redis down;
    │                                                with ``retry_after_seconds``
    ├── JobCancelled (cancelled, 409)                terminal event of a cancelled job
    ├── ClientGone (client_gone, 499)                a synchronous caller hung up; its job was cancelled
    ├── GenerationFailed (generation_failed, 500)    the engine raised; message is safe
    ├── ModelError (model_error, 400)                a model path that cannot be loaded
    │   └── UnsafeCheckpoint (unsafe_checkpoint, 400) a pickle (.ckpt/.pt/.bin) model or LoRA
    └── InvalidSettings (invalid_settings, 500)      a bad flag or SDWORKER_* value; the CLI exits 2
"""

from __future__ import annotations

from typing import ClassVar


class SdworkerError(Exception):
    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidRequest(SdworkerError):
    code = "invalid_request"
    http_status = 422


class InvalidImage(InvalidRequest):
    code = "invalid_image"


class ImageTooLarge(InvalidRequest):
    code = "image_too_large"
    http_status = 413


class TooLarge(InvalidRequest):
    code = "too_large"
    http_status = 413


class UnknownScheduler(InvalidRequest):
    code = "unknown_scheduler"


class Unsupported(InvalidRequest):
    code = "unsupported"


class WrongWorker(InvalidRequest):
    """A job misrouted by rbee's queen: refused, not run on the wrong worker."""

    code = "wrong_worker"


class LoraNotFound(InvalidRequest):
    code = "lora_not_found"
    http_status = 404


class LoraIncompatible(InvalidRequest):
    code = "lora_incompatible"


class ControlNetNotFound(InvalidRequest):
    code = "controlnet_not_found"
    http_status = 404


class IpAdapterNotFound(InvalidRequest):
    code = "ip_adapter_not_found"
    http_status = 404


class ModelTooLarge(InvalidRequest):
    """Refused at submit, before anything loads: an out-of-memory crash mid-job is the alternative."""

    code = "model_too_large"


class BodyTooLarge(SdworkerError):
    code = "body_too_large"
    http_status = 413


class JobNotFound(SdworkerError):
    code = "job_not_found"
    http_status = 404


class ModelNotFound(SdworkerError):
    code = "model_not_found"
    http_status = 404


class JobNotFinished(SdworkerError):
    code = "job_not_finished"
    http_status = 409


class InputsDropped(SdworkerError):
    """A dead-lettered job whose input images were dropped when it ended: it cannot be run again as it was."""

    code = "inputs_dropped"
    http_status = 409


class QueueFull(SdworkerError):
    code = "queue_full"
    http_status = 429

    def __init__(self, message: str, *, retry_after_seconds: int = 5) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class QuotaExceeded(QueueFull):
    """An API key's own quota (``max_queued``, ``rate``) from the keys file; ``field`` names it."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, field: str, retry_after_seconds: int = 5) -> None:
        super().__init__(message, retry_after_seconds=retry_after_seconds)
        self.field = field


class NotReady(SdworkerError):
    """Most causes pass by themselves (a model loading, Redis restarting, a worker replaced), so the
    503 says when to ask again (``Retry-After``): clients that honour it neither give up nor hammer."""

    code = "not_ready"
    http_status = 503
    retry_after_seconds: ClassVar[int] = 2


class JobCancelled(SdworkerError):
    code = "cancelled"
    http_status = 409


class ClientGone(SdworkerError):
    """The client of a synchronous call (OpenAI Images, A1111) hung up; nobody reads the answer."""

    code = "client_gone"
    http_status = 499


class GenerationFailed(SdworkerError):
    code = "generation_failed"
    http_status = 500


class ModelError(SdworkerError):
    code = "model_error"
    http_status = 400


class UnsafeCheckpoint(ModelError):
    code = "unsafe_checkpoint"


class InvalidSettings(SdworkerError):
    """A setting's value is refused at start; ``message`` names the flag or variable and what is allowed.
    Never an HTTP answer (settings are fixed before the app exists), hence 500 if it ever were one."""

    code = "invalid_settings"
