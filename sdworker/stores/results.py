"""Where final PNGs are kept: ``ResultStore``, the small protocol, and its two implementations.

- ``FilesystemResults`` (the default of ``serve``): ``<data-dir>/outputs/<date>/<job id>-<n>.png``, the
  folder A1111 users expect. It mints no URL of its own: the API serves the file at
  ``/v1/jobs/{id}/image`` behind a signed token (``api/signing.py``).
- ``S3Results`` (``--results-s3 s3://bucket/prefix``): S3-compatible object storage through boto3.
  Endpoint, region and credentials come from the usual AWS variables (``AWS_ENDPOINT_URL``,
  ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``...), read by boto3 itself. Its URLs are
  presigned GETs, so a client fetches the image from the bucket, not through an API node.

A stored image is named by a reference (``put`` returns it; the job keeps it): a path relative to the
data folder, or an object key. An object key is a pure function of the job id and the index
(``<prefix>/<job id>/<n>.png``), so any API node can presign a job's URL without reading its record.

Every call blocks (a disk write with fsync, an HTTP request): async callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from sdworker.errors import InvalidSettings, NotReady

# SigV4 refuses a presigned URL that lasts longer than a week; a longer retention is cut to it.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


class ResultStore(Protocol):
    """The final PNGs of jobs. ``put`` returns the reference to keep with the job; ``url`` is a link
    anyone can follow until ``expires_at``, or None when the API serves the image itself (signed)."""

    name: str  # "filesystem" | "s3"

    def put(self, job_id: str, index: int, png: bytes) -> str: ...

    def get(self, ref: str) -> bytes | None:
        """The PNG, or None when it is gone."""
        ...

    def url(self, job_id: str, index: int, expires_at: float) -> str | None: ...

    def delete(self, refs: Iterable[str]) -> None:
        """Remove the images (a missing one is not an error: retention may race a manual cleanup)."""
        ...


class FilesystemResults:
    name = "filesystem"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def put(self, job_id: str, index: int, png: bytes) -> str:
        """Written to a temporary name and renamed, so a crash leaves no half file under a name the
        database points to."""
        day = time.strftime("%Y-%m-%d", time.localtime())
        relative = f"outputs/{day}/{job_id}-{index}.png"
        target = self.data_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        with open(partial, "wb") as out:
            out.write(png)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
        return relative

    def get(self, ref: str) -> bytes | None:
        try:
            return (self.data_dir / ref).read_bytes()
        except FileNotFoundError:
            return None

    def url(self, job_id: str, index: int, expires_at: float) -> str | None:
        return None  # served by the API, signed for the caller's key

    def delete(self, refs: Iterable[str]) -> None:
        for ref in refs:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / ref).unlink()


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at its ends)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise InvalidSettings(f"--results-s3: expected s3://bucket/prefix, got {url!r}")
    return parts.netloc, parts.path.strip("/")


class S3Results:
    """Objects ``<prefix>/<job id>/<n>.png`` in one bucket. The boto3 client is thread-safe; it is made
    once, so its connection pool is reused."""

    name = "s3"

    def __init__(self, url: str, *, client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if client is None:
            try:  # the `s3` extra: only a node that stores results in a bucket needs it
                import boto3
                from botocore.config import Config
            except ImportError:
                raise InvalidSettings("--results-s3 needs boto3: pip install 'sdworker[s3]'") from None

            # SigV4 presigning (X-Amz-Expires, what every S3-compatible store accepts), whatever boto3's
            # default for the region.
            client = boto3.client("s3", config=Config(signature_version="s3v4"))
        self._s3 = client

    def key(self, job_id: str, index: int) -> str:
        name = f"{job_id}/{index}.png"
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, job_id: str, index: int, png: bytes) -> str:
        key = self.key(job_id, index)
        with self._unavailable("PUT"):
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=png, ContentType="image/png")
        return key

    def get(self, ref: str) -> bytes | None:
        with self._unavailable("GET"):
            try:
                answer = self._s3.get_object(Bucket=self.bucket, Key=ref)
            except self._s3.exceptions.NoSuchKey:
                return None
            body: bytes = answer["Body"].read()
        return body

    def url(self, job_id: str, index: int, expires_at: float) -> str | None:
        """A presigned GET lasting the job's retention left (``X-Amz-Expires``), at least a second."""
        seconds = min(MAX_PRESIGN_SECONDS, max(1, round(expires_at - time.time())))
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(job_id, index)}, ExpiresIn=seconds
        )
        return url

    def delete(self, refs: Iterable[str]) -> None:
        keys = list(refs)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            chunk = [{"Key": key} for key in keys[start:start + 1000]]
            with self._unavailable("DELETE"):
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})

    @contextlib.contextmanager
    def _unavailable(self, verb: str) -> Iterator[None]:
        """boto3's errors (no endpoint, refused credentials, a missing bucket) as a 503 that names the
        bucket and the error, never the credentials."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise NotReady(f"the result store (s3://{self.bucket}) refused a {verb}: {type(exc).__name__}: "
                           f"{_short(exc)}") from None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def result_store(s3_url: str | None, data_dir: Path | None) -> ResultStore | None:
    """The store ``--results-s3`` names; else the data folder's files (None without one: memory)."""
    if s3_url:
        return S3Results(s3_url)
    return FilesystemResults(data_dir) if data_dir is not None else None
