"""``sdworker generate --url URL PROMPT``: the same command and output as local generation (progress
bar, ``--preview-dir``, PNGs with their metadata, paths on stdout), run on a remote worker through
``sdworker.client`` - a single ``sdworker serve`` or an API node of a fleet, it only speaks HTTP.

Only the client is imported here (no torch, no model code), so a machine with the client alone runs
it. The server validates the request and names the field at fault; this module checks only what the
server cannot see (the output name, the input files). Ctrl-C cancels the remote job, then exits 130;
a dropped connection resumes where it stopped; a full queue is waited out, saying for how long.

Exit codes: 0 done, 1 the job failed or the worker could not be reached, 2 a bad request, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdworker.cli.outputs import output_paths
from sdworker.client import (
    APIError,
    Client,
    ClientError,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobQueued,
    PreviewOptions,
    PreviewReady,
    QueueFull,
    ReconnectNotice,
    StepProgressed,
)

URL_VARIABLE = "SDWORKER_URL"
# Flags that choose and load a model: meaningless when the model runs elsewhere.
LOCAL_ONLY_FLAGS = {
    "model": "--model", "model_config_dir": "--model-config", "device": "--device", "dtype": "--dtype",
    "taesd": "--taesd", "allow_unsafe_pickle": "--allow-unsafe-pickle", "cache_dir": "--cache-dir",
}


class UsageError(Exception):
    """A flag or file that is wrong before anything is sent: one line, exit 2."""


def remote_url(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> str | None:
    """``--url``, else ``SDWORKER_URL``; None = generate locally. (The worker's URL is a client
    setting, not one of the server's ``Settings``, so it is read here.)"""
    url = getattr(args, "url", None) or environ.get(URL_VARIABLE)
    return url or None


def run_remote_generate(args: argparse.Namespace, url: str) -> int:
    try:
        fields = job_fields(args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    outputs = output_paths(Path(args.output), args.n)
    with Client(url) as client:
        session = _Session(client, url, args)
        try:
            return session.run(fields, outputs)
        except KeyboardInterrupt:
            return session.interrupted()
        except APIError as exc:
            session.close()
            return _fail(exc.message, 2 if exc.status_code < 500 else 1)
        except JobCancelled as exc:
            session.close()
            return _fail(f"job {exc.job_id} was cancelled on {url}", 1)
        except JobFailed as exc:
            session.close()
            return _fail(f"job {exc.job_id} failed ({exc.code}): {exc.message}", 1)
        except ClientError as exc:
            session.close()
            return _fail(exc.message, 1)


def job_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The job's fields from the flags (None = the server's default)."""
    for name, flag in LOCAL_ONLY_FLAGS.items():
        if getattr(args, name, None) not in (None, False):
            raise UsageError(f"{flag}: the remote worker runs its own model; drop {flag} or --url/{URL_VARIABLE}")
    if Path(args.output).suffix.lower() != ".png":
        raise UsageError(f"-o {args.output}: images are written as PNG; name the file .png")
    if args.mask and not args.init_image:
        raise UsageError("--mask needs --init-image (the image to inpaint)")
    if args.preview_dir:
        preview = PreviewOptions(every=args.preview_every, method=args.preview_method, format=args.preview_format)
    else:
        preview = PreviewOptions(every=0)  # nobody looks at them: do not send them
    return {
        "negative_prompt": args.negative or None,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "scheduler": args.scheduler,
        "n": args.n,
        "strength": args.strength,
        "init_image": _read(args.init_image, "--init-image"),
        "mask_image": _read(args.mask, "--mask"),
        "preview": preview,
    }


def _read(path: str | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def _fail(message: str, code: int) -> int:
    print(f"sdworker: error: {message}", file=sys.stderr)
    return code


class _Session:
    """One remote generation: submit, follow, write; and what to do when interrupted."""

    def __init__(self, client: Client, url: str, args: argparse.Namespace) -> None:
        self.client, self.url, self.args = client, url, args
        self.quiet: bool = args.quiet
        self.job_id: str | None = None
        self.bar: Any = None
        self.preview_dir = Path(args.preview_dir) if args.preview_dir else None

    def run(self, fields: dict[str, Any], outputs: list[Path]) -> int:
        started = time.monotonic()
        if self.preview_dir is not None:
            self.preview_dir.mkdir(parents=True, exist_ok=True)
        self.client.health()  # a wrong URL fails here at once, not after the submit's retries
        job = self.client.submit(self.args.prompt, wait_for_queue=True, on_queue_full=self._queue_full, **fields)
        self.job_id = job.job_id
        done: JobCompleted | None = None
        for event in job.events(on_reconnect=self._reconnecting):
            if isinstance(event, JobQueued) and event.position and event.position > 1:
                self._say(f"queued on {self.url} behind {event.position - 1} job(s)")
            elif isinstance(event, StepProgressed):
                self._progress(event)
            elif isinstance(event, JobCompleted):
                done = event
        self.close()
        if done is None:  # resumed after the end: ask for the result
            result = job.wait()
            pngs, seeds = result.pngs, result.seeds
        else:
            pngs, seeds = done.pngs, done.seeds
        for png, path in zip(pngs, outputs, strict=False):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)  # the server's PNG, its A1111 `parameters` chunk included
            print(path)
        scheduler = f" with {self.args.scheduler}" if self.args.scheduler else ""
        self._say(f"seed {', '.join(map(str, seeds))}; {self.args.steps} steps{scheduler} in "
                  f"{time.monotonic() - started:.1f} s on {self.url}")
        return 0

    def interrupted(self) -> int:
        """Ctrl-C: cancel the remote job (if there is one yet), then exit 130."""
        self.close()
        if self.job_id is not None:
            cancelled = self.client.cancel_quietly(self.job_id)
            state = "cancelled" if cancelled is not None else "could not cancel"
            print(f"sdworker: interrupted; {state} job {self.job_id} on {self.url}", file=sys.stderr)
        return 130

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _progress(self, event: StepProgressed) -> None:
        if isinstance(event, PreviewReady) and self.preview_dir is not None:
            (self.preview_dir / f"step-{event.step:03d}.{event.format}").write_bytes(event.data)
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=event.total, unit="step", file=sys.stderr, desc="denoising", dynamic_ncols=True)
        self.bar.update(event.step - self.bar.n)

    def _queue_full(self, error: QueueFull) -> None:
        self._say(f"the queue on {self.url} is full; trying again in {error.retry_after_seconds:g} s")

    def _reconnecting(self, notice: ReconnectNotice) -> None:
        self._say(f"connection lost ({notice.error}); resuming in {notice.delay_seconds:.1f} s")

    def _say(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)
