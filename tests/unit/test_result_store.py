"""The result store seam without a server: the filesystem store's files, the S3 store's object keys and
presigned lifetimes (presigning is local: boto3 signs without a request), the ``--results-s3`` form."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config

from sdworker.errors import InvalidSettings
from sdworker.stores.results import MAX_PRESIGN_SECONDS, FilesystemResults, S3Results, parse_s3_url


def test_the_filesystem_store_keeps_outputs_by_date_and_deletes_them(tmp_path: Path) -> None:
    store = FilesystemResults(tmp_path)
    ref = store.put("job1", 0, b"\x89PNG data")
    assert ref.startswith("outputs/") and ref.endswith("/job1-0.png")
    assert store.get(ref) == b"\x89PNG data" and not list(tmp_path.rglob("*.part"))
    assert store.url("job1", 0, time.time() + 60) is None  # served by the API, signed
    store.delete([ref, "outputs/gone.png"])  # a missing file is no error
    assert store.get(ref) is None


def _s3(url: str) -> S3Results:
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s",
                          endpoint_url="http://127.0.0.1:9", config=Config(signature_version="s3v4"))
    return S3Results(url, client=client)


def _expires(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])


def test_s3_keys_and_presigned_lifetimes() -> None:
    store = _s3("s3://renders/sd/out/")
    assert store.key("abc", 2) == "sd/out/abc/2.png"
    assert _s3("s3://renders").key("abc", 0) == "abc/0.png"
    url = store.url("abc", 0, time.time() + 120)
    assert url is not None and urlsplit(url).path == "/renders/sd/out/abc/0.png"
    assert abs(_expires(url) - 120) <= 1
    month = store.url("abc", 0, time.time() + 30 * 86400)  # SigV4's longest is a week
    assert month is not None and _expires(month) == MAX_PRESIGN_SECONDS
    past = store.url("abc", 0, time.time() - 5)
    assert past is not None and _expires(past) == 1


@pytest.mark.parametrize("bad", ["renders/x", "http://renders/x", "s3:///x", "s3://b/x?y=1"])
def test_a_bad_results_url_is_refused(bad: str) -> None:
    with pytest.raises(InvalidSettings, match="--results-s3"):
        parse_s3_url(bad)
