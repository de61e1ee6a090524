"""The job's life as one table: for each state and each thing that can happen to a job, the state it
ends in and what else must happen. Every store decides through it: ``LocalJobService`` (memory,
SQLite) looks transitions up with ``rule``; the Redis scripts get the same table as JSON in their Lua
prelude (``rules_json``) and look it up there, so a rule is written here and nowhere else. The stores
keep only the mechanics (queues, fences, streams, the claim order).

A missing entry means the action is ignored: the job does not change and the caller is told no (a
stale worker's write, a cancel of a finished job). The rules it encodes:

- a cancel that arrives before the result is stored wins: ``complete`` of a ``cancelling`` job ends
  it ``cancelled``;
- an interrupt (A1111) of a running job lets it finish with the image so far: the worker is signalled,
  the job stays ``running`` and completes; of a queued job, it is a cancel;
- releasing (SIGTERM hand-back) a ``cancelling`` job cancels it: nobody else would ever finish it;
- a job lost with its worker is retried (``queued`` again, a ``retrying`` event), or ends ``failed``
  in the dead letters when out of attempts; a ``cancelling`` one ends ``cancelled``;
- a finished job never changes;
- every way into a finished state strips the job's input images (``without_inputs``) and retires it
  (retention trims the oldest results and every index with them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum

from sdworker.domain.request import InputImage, Operation
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import JobStatus


class Action(StrEnum):
    CLAIM = "claim"  # a worker takes the job
    PUBLISH = "publish"  # the worker reports an event (a step, a preview)
    HEARTBEAT = "heartbeat"  # the worker says it still holds the job
    COMPLETE = "complete"  # the worker stores the result
    FAIL = "fail"  # the worker reports a failure
    CANCEL = "cancel"  # the worker reports it stopped the job (cancelled)
    CLIENT_CANCEL = "client_cancel"  # DELETE /v1/jobs/{id}
    INTERRUPT = "interrupt"  # A1111's interrupt: finish now with the image so far
    RELEASE = "release"  # SIGTERM: the worker hands the job back
    DEADLINE = "deadline"  # the job's deadline passed
    NO_WORKER = "no_worker"  # no live worker serves the job's model (a fleet)
    LOST = "lost"  # the worker died or went silent: retry the job
    DEAD_LETTER = "dead_letter"  # lost once too often


class Effect(StrEnum):
    SIGNAL_CANCEL = "signal_cancel"  # tell the worker to stop at its next step
    SIGNAL_INTERRUPT = "signal_interrupt"  # tell the worker to finish with the image so far
    FINISH = "finish"  # a terminal state: strip the inputs, retire (retention), the terminal event
    REQUEUE = "requeue"  # back to the front of the queue, not counted as an attempt
    RETRY = "retry"  # back to the queue as a new attempt (a ``retrying`` event)


@dataclass(frozen=True, slots=True)
class Transition:
    to: JobStatus
    effects: frozenset[Effect] = frozenset()


def _t(to: JobStatus, *effects: Effect) -> Transition:
    return Transition(to, frozenset(effects))


Q, R, C = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING
DONE, FAILED, CANCELLED = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED
A, E = Action, Effect

# A finished job (completed, failed, cancelled) has no entry: nothing changes it.
RULES: dict[JobStatus, dict[Action, Transition]] = {
    Q: {
        A.CLAIM: _t(R),
        A.CLIENT_CANCEL: _t(CANCELLED, E.FINISH),
        A.INTERRUPT: _t(CANCELLED, E.FINISH),  # nothing to interrupt yet: a cancel
        A.DEADLINE: _t(CANCELLED, E.FINISH),
        A.NO_WORKER: _t(FAILED, E.FINISH),
        A.DEAD_LETTER: _t(FAILED, E.FINISH),
    },
    R: {
        A.PUBLISH: _t(R),
        A.HEARTBEAT: _t(R),
        A.COMPLETE: _t(DONE, E.FINISH),
        A.FAIL: _t(FAILED, E.FINISH),
        A.CANCEL: _t(CANCELLED, E.FINISH),
        A.CLIENT_CANCEL: _t(C, E.SIGNAL_CANCEL),
        A.INTERRUPT: _t(R, E.SIGNAL_INTERRUPT),  # it completes with the image so far
        A.RELEASE: _t(Q, E.REQUEUE),
        A.DEADLINE: _t(C, E.SIGNAL_CANCEL),
        A.LOST: _t(Q, E.RETRY),
        A.DEAD_LETTER: _t(FAILED, E.FINISH),
    },
    C: {
        A.PUBLISH: _t(C),
        A.HEARTBEAT: _t(C),
        A.COMPLETE: _t(CANCELLED, E.FINISH),  # the cancel arrived before the result was stored: it wins
        A.FAIL: _t(FAILED, E.FINISH),
        A.CANCEL: _t(CANCELLED, E.FINISH),
        A.CLIENT_CANCEL: _t(C, E.SIGNAL_CANCEL),
        A.INTERRUPT: _t(C, E.SIGNAL_CANCEL),  # already stopping: an interrupt does not undo a cancel
        A.RELEASE: _t(CANCELLED, E.FINISH),  # honour the cancel, or nobody ever would
        A.DEADLINE: _t(C, E.SIGNAL_CANCEL),
        A.LOST: _t(CANCELLED, E.FINISH),
        A.DEAD_LETTER: _t(CANCELLED, E.FINISH),
    },
}


def rule(state: JobStatus, action: Action) -> Transition | None:
    """What ``action`` does to a job in ``state``; None: it is ignored (the job does not change)."""
    return RULES.get(state, {}).get(action)


def rules_json() -> str:
    """The table as the Lua prelude reads it: ``{state: {action: {to = ..., effects = {name = true}}}}``
    (effects as a set, so a script asks ``t.effects.finish``; an ignored action is absent)."""
    table = {
        state.value: {
            action.value: {"to": t.to.value, "effects": {effect.value: True for effect in sorted(t.effects)}}
            for action, t in actions.items()
        }
        for state, actions in RULES.items()
    }
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    assert "'" not in text and "\\" not in text  # it goes into a single-quoted Lua string as is
    return text


def without_inputs(spec: JobSpec) -> JobSpec:
    """A finished job's spec: its input images (up to ``max_body_bytes`` each) are not needed once it
    has run. The init and mask images go; ControlNet units, reference and IP-Adapter images keep their
    place and field with no bytes (how many there were stays visible). The one definition, for every
    store (Redis stores this spec at submit and swaps it in when the job ends)."""
    request = spec.request
    units = tuple(replace(unit, image=InputImage(b"", unit.image.field)) for unit in request.controlnet)
    references = tuple(InputImage(b"", image.field) for image in request.reference_images)
    ip_adapter = request.ip_adapter
    if ip_adapter is not None:
        ip_adapter = replace(ip_adapter, images=tuple(InputImage(b"", image.field) for image in ip_adapter.images))
    return replace(
        spec,
        request=replace(
            request,
            init_image=None,
            mask_image=None,
            controlnet=units,
            reference_images=references,
            ip_adapter=ip_adapter,
        ),
    )


def dropped_input(spec: JobSpec) -> str | None:
    """The field of an input image a finished job no longer holds (``without_inputs`` dropped it), or
    None when the spec still says the whole job. A job rerun from such a spec would be another job
    (an img2img job run as text-to-image), so a requeue refuses it instead."""
    request = spec.request
    needs_init = (Operation.IMAGE_TO_IMAGE, Operation.INPAINT, Operation.UPSCALE)
    if request.operation in needs_init and request.init_image is None:
        return "init_image"
    if request.operation is Operation.INPAINT and request.mask_image is None:
        return "mask_image"
    images = [unit.image for unit in request.controlnet] + list(request.reference_images)
    if request.ip_adapter is not None:
        images += list(request.ip_adapter.images)
    return next((image.field for image in images if not image.data), None)
