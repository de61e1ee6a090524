"""The cases of ``bench/hostile.py`` for the faults of issue #20: hostile bodies at every door
(native ``/v1/jobs``, OpenAI ``/v1/images/*``, A1111 ``/sdapi/v1/*``), unfinished bodies, key reloads
and the access log. Each case says which answers are of the right class; see ``Phase.expect``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from PIL import Image

from bench.hostile_kit import (
    HANG_SECONDS,
    KEY,
    Phase,
    Server,
    cancel_all,
    finish,
    status_of,
)

REFUSED = frozenset({400, 413, 422})
OK_OR_REFUSED = REFUSED | {200, 202}
MAX_SEED = 2**64 - 1


# --- images -----------------------------------------------------------------------------------------


def encoded(fmt: str, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    image = Image.new(mode, size)
    for x in range(0, size[0], 4):
        for y in range(0, size[1], 4):
            value = (x * 10 % 256, y * 15 % 256, (x * y) % 256, 255)
            image.putpixel((x, y), value[: len(mode)] if mode != "L" else x * y % 256)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_pngs() -> dict[str, bytes]:
    """The run's reproductions: an 8x8 PNG with a zTXt/iCCP/iTXt chunk that inflates to 8 MB, a broken chunk."""
    small = encoded("PNG", (8, 8))
    bomb = zlib.compress(b"a" * 8_000_000)
    after_ihdr = 33
    return {
        "zTXt 8 MB": small[:after_ihdr] + _chunk(b"zTXt", b"comment\0\0" + bomb) + small[after_ihdr:],
        "iCCP 8 MB": small[:after_ihdr] + _chunk(b"iCCP", b"profile\0\0" + bomb) + small[after_ihdr:],
        "iTXt 8 MB": small[:after_ihdr] + _chunk(b"iTXt", b"comment\0\1\0\0\0" + bomb) + small[after_ihdr:],
        "broken chunk": small[:after_ihdr] + b"\x00\x00\x00\x05IDAT" + small[after_ihdr + 8:],
    }


def mutated(fmt: str, count: int, rng: random.Random) -> list[bytes]:
    """Bit flips, extreme bytes, truncation, duplicated and deleted slices of a 64x64 file."""
    seed = encoded(fmt)
    out = []
    for _ in range(count):
        buffer = bytearray(seed)
        match rng.randrange(5):
            case 0:
                for _ in range(rng.randint(1, 8)):
                    buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
            case 1:
                for _ in range(rng.randint(1, 4)):
                    buffer[rng.randrange(len(buffer))] = rng.choice((0x00, 0xFF, 0x7F, 0x80))
            case 2:
                del buffer[rng.randrange(8, len(buffer)):]
            case 3:
                start = rng.randrange(len(buffer))
                at = rng.randrange(len(buffer))
                buffer[at:at] = buffer[start:start + rng.randint(1, 64)]
            case _:
                start = rng.randrange(8, len(buffer))
                del buffer[start:start + rng.randint(1, 32)]
        out.append(bytes(buffer))
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD_IMAGE = encoded("PNG")
GOOD_MASK = encoded("PNG", mode="L")
GOOD_ALPHA_MASK = encoded("PNG", mode="RGBA")
NATIVE = {"prompt": "hostile", "width": 64, "height": 64, "steps": 4}
A1111 = {"prompt": "hostile", "width": 64, "height": 64, "steps": 4}
OPENAI_FORM = {"prompt": "hostile", "size": "64x64", "steps": "4"}


async def send_image(client: httpx.AsyncClient, entry: str, data: bytes) -> httpx.Response:
    """``data`` at one of the eight image entry points; every other part of the request is valid."""
    match entry:
        case "native input_image":
            return await client.post("/v1/jobs", json={
                **NATIVE, "operation": "image_transform", "input_image": b64(data)})
        case "native init_image":
            return await client.post("/v1/jobs", json={
                **NATIVE, "operation": "image_inpaint", "init_image": b64(data), "mask_image": b64(GOOD_MASK)})
        case "native mask_image":
            return await client.post("/v1/jobs", json={
                **NATIVE, "operation": "image_inpaint", "init_image": b64(GOOD_IMAGE), "mask_image": b64(data)})
        case "openai edit image":
            return await client.post("/v1/images/edits", data=OPENAI_FORM, files={"image": ("x.png", data)})
        case "openai edit mask":
            return await client.post("/v1/images/edits", data=OPENAI_FORM, files={
                "image": ("x.png", GOOD_IMAGE), "mask": ("m.png", data)})
        case "a1111 init_images":
            return await client.post("/sdapi/v1/img2img", json={**A1111, "init_images": [b64(data)]})
        case "a1111 mask":
            return await client.post("/sdapi/v1/img2img", json={
                **A1111, "init_images": [b64(GOOD_IMAGE)], "mask": b64(data)})
        case "a1111 extras image":
            return await client.post("/sdapi/v1/extra-single-image", json={"image": b64(data), "upscaling_resize": 1})
    raise ValueError(entry)


IMAGE_ENTRIES = ("native input_image", "native init_image", "native mask_image", "openai edit image",
                 "openai edit mask", "a1111 init_images", "a1111 mask", "a1111 extras image")


async def answered(phase: Phase, client: httpx.AsyncClient, label: str, allowed: frozenset[int],
                   call: Awaitable[httpx.Response], bound: float = HANG_SECONDS) -> httpx.Response | None:
    """One request with a bound; a native 202 is followed until its job ends (``finish``)."""
    try:
        async with asyncio.timeout(bound):
            response = await call
    except TimeoutError:
        phase.tried += 1
        phase.bad(f"{label}: no answer within {bound:.0f} s")
        return None
    except httpx.TransportError as exc:
        phase.tried += 1
        phase.bad(f"{label}: {type(exc).__name__}")
        return None
    phase.expect(label, response.status_code, allowed)
    if response.status_code == 202 and "job_id" in response.text:
        await finish(client, response.json()["job_id"], phase, label)
    return response


# --- cases ------------------------------------------------------------------------------------------


async def crafted_images(server: Server, client: httpx.AsyncClient, phase: Phase, mutations: int = 20) -> None:
    """Crafted PNGs (refused, 4xx naming the field) and mutated PNG/JPEG/WebP (served or refused) at
    every image entry point of every door."""
    rng = random.Random("sdworker-hostile")
    crafted = crafted_pngs()
    files = {f"{fmt} mutated": mutated(fmt, mutations, rng) for fmt in ("PNG", "JPEG", "WEBP")}
    for entry in IMAGE_ENTRIES:
        for name, data in crafted.items():
            answer = await answered(phase, client, f"{entry} {name}", REFUSED, send_image(client, entry, data))
            if answer is not None and answer.status_code in REFUSED and entry.split()[-1] not in answer.text:
                phase.bad(f"{entry} {name}: the error does not name the field ({answer.text[:80]})")
        for name, batch in files.items():
            for data in batch:
                await answered(phase, client, f"{entry} {name}", OK_OR_REFUSED, send_image(client, entry, data))


async def huge_prompts(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """1 MB and 10 MB prompts at every door: refused at once (the run held the worker 96 s with one)."""
    for size in (1_000_000, 10_000_000):
        text = "a" * size
        for _ in range(3):
            await answered(phase, client, f"a1111 prompt {size}", REFUSED,
                           client.post("/sdapi/v1/txt2img", json={**A1111, "prompt": text}))
            await answered(phase, client, f"a1111 negative_prompt {size}", REFUSED,
                           client.post("/sdapi/v1/txt2img", json={**A1111, "negative_prompt": text}))
        await answered(phase, client, f"native prompt {size}", REFUSED,
                       client.post("/v1/jobs", json={**NATIVE, "prompt": text}))
        await answered(phase, client, f"openai prompt {size}", REFUSED,
                       client.post("/v1/images/generations", json={"prompt": text, "size": "64x64"}))


async def resize_bomb(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """300 bytes asking for a 16384x16384 resize: refused before anything is decoded or resized (the
    run paid 20 s and 1.1 GB, 2.2 GB with a mask, before its 413). Bound: 10 s an answer."""
    init = b64(encoded("PNG"))
    bomb = {**A1111, "width": 16384, "height": 16384, "resize_mode": 1, "init_images": [init]}
    for _ in range(5):
        await answered(phase, client, "img2img 16384 resize_mode 1", REFUSED,
                       client.post("/sdapi/v1/img2img", json=bomb), bound=10)
        await answered(phase, client, "img2img 16384 with mask", REFUSED,
                       client.post("/sdapi/v1/img2img", json={**bomb, "mask": b64(GOOD_MASK)}), bound=10)
        await answered(phase, client, "extras to 16384x16384", REFUSED, client.post(
            "/sdapi/v1/extra-single-image", json={"image": init, "resize_mode": 1, "upscaling_resize_w": 16384,
                                                  "upscaling_resize_h": 16384}), bound=10)
        await answered(phase, client, "extras x8 of a 4096 header", REFUSED, client.post(
            "/sdapi/v1/extra-single-image", json={"image": b64(encoded("PNG", (2048, 2048))),
                                                  "upscaling_resize": 8}), bound=10)


async def big_seeds(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """Seeds 0..2^64-1 (seed + n - 1 included) are served on every door, the rest refused."""
    for seed, n, allowed in ((2**64, 1, REFUSED), (2**64 + 5, 1, REFUSED), (10**30, 1, REFUSED),
                             (MAX_SEED, 2, REFUSED), (MAX_SEED, 1, frozenset({200, 202})),
                             (MAX_SEED - 1, 2, frozenset({200, 202}))):
        await answered(phase, client, f"a1111 seed {seed} x{n}", allowed, client.post(
            "/sdapi/v1/txt2img", json={**A1111, "seed": seed, "batch_size": n}))
        await answered(phase, client, f"native seed {seed} x{n}", allowed, client.post(
            "/v1/jobs", json={**NATIVE, "seed": seed, "n": n}))
        await answered(phase, client, f"openai seed {seed} x{n}", allowed, client.post(
            "/v1/images/generations", json={"prompt": "hostile", "size": "64x64", "steps": 4, "seed": seed, "n": n}))


async def bad_text(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """Lone surrogates and NUL bytes in every text field; CLIP_stop_at_last_layers of 1e400 and kin."""
    for bad in ("\\ud800", "a\\udfff", "\\u0000"):
        for door, path, fields in (("a1111", "/sdapi/v1/txt2img", ("prompt", "negative_prompt", "sampler_name")),
                                   ("native", "/v1/jobs", ("prompt", "negative_prompt")),
                                   ("openai", "/v1/images/generations", ("prompt", "negative_prompt"))):
            base = A1111 if door == "a1111" else NATIVE if door == "native" else {"prompt": "x", "size": "64x64"}
            for name in fields:
                body = json.dumps({**base, name: "PLACEHOLDER"}).replace("PLACEHOLDER", bad).encode()
                await answered(phase, client, f"{door} {name} {bad}", REFUSED, client.post(
                    path, content=body, headers={"Content-Type": "application/json"}))
    for value in ("1e400", "-1e400", "1e308", "NaN", "Infinity", "0.5", "13", "\"2\\ud800\""):
        body = b'{"prompt": "a", "steps": 4, "width": 64, "height": 64, "override_settings": ' \
               b'{"CLIP_stop_at_last_layers": %s}}' % value.encode()
        await answered(phase, client, f"CLIP_stop_at_last_layers {value}", REFUSED, client.post(
            "/sdapi/v1/txt2img", content=body, headers={"Content-Type": "application/json"}))


async def not_utf8(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """UTF-16/32 JSON is a 400 on every door; UTF-8 with a BOM is served (RFC 8259 lets a parser ignore it)."""
    doors = (("/v1/jobs", NATIVE), ("/v1/images/generations", {"prompt": "hostile", "size": "64x64", "steps": 4}),
             ("/sdapi/v1/txt2img", A1111))
    for path, body in doors:
        text = json.dumps(body)
        for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
            await answered(phase, client, f"{path} {encoding}", frozenset({400}), client.post(
                path, content=text.encode(encoding), headers={"Content-Type": "application/json"}))
        await answered(phase, client, f"{path} utf-8 BOM", frozenset({200, 202}), client.post(
            path, content=text.encode("utf-8-sig"), headers={"Content-Type": "application/json"}))


async def many_files(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """100 files in one OpenAI edit form: a 400 about the form, not "malformed JSON"."""
    small = encoded("PNG", (8, 8))
    for field_name in ("image[]", "image", "mask"):
        for _ in range(3):
            files = [(field_name, (f"{i}.png", small)) for i in range(100)]
            answer = await answered(phase, client, f"100 files as {field_name}", frozenset({400, 413}),
                                    client.post("/v1/images/edits", data=OPENAI_FORM, files=files))
            if answer is not None and "malformed JSON" in answer.text:
                phase.bad(f"100 files as {field_name}: answered 'malformed JSON'")


async def unfinished_bodies(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """50 chunked POSTs that stop mid-body and 450 POSTs trickling a byte every 0.5 s against
    ``Content-Length: 100000``: each answered 408 and closed (the server's body deadline is 2 s here),
    where the run found them held forever."""
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\n")

    async def one(chunked: bool) -> None:
        phase.tried += 1
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        except OSError as exc:
            phase.bad(f"connect failed: {exc}")
            return
        answer = b""
        try:
            writer.write((head + ("Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pro\r\n" if chunked
                                  else "Content-Length: 100000\r\n\r\n{")).encode())
            while time.monotonic() - started < HANG_SECONDS:
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    data = await asyncio.wait_for(reader.read(65536), 0.5)
                    if not data:
                        break
                    answer += data
                if not chunked:
                    writer.write(b" ")
            else:
                phase.bad(f"{'chunked' if chunked else 'trickling'} body still open after {HANG_SECONDS:.0f} s")
                return
        except OSError:
            pass  # reset by the server after its answer
        finally:
            writer.close()
        code = status_of(answer)
        label = "chunked, stopped" if chunked else "trickling"
        phase.answer(str(code) if code else "closed without an answer")
        if code != 408:
            phase.bad(f"{label}: {code or 'no answer'} (expected 408)")

    await asyncio.gather(*(one(index < 50) for index in range(500)))


async def keyless_bodies(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """20 concurrent 30 MB POSTs without a key, 3 times: each a 401 before its body is read (read
    first, 20 of them took the server from 104 to 761 MB and left 525 MB). Sent from threads: pushing
    600 MB from this event loop would stall its own /health sampling, not the server's."""
    body = b'{"prompt": "' + b"a" * 30_000_000 + b'"}'

    def post() -> int:
        with httpx.Client(base_url=server.url, timeout=HANG_SECONDS) as keyless:
            try:
                return keyless.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"}).status_code
            except httpx.HTTPError:
                return 0

    for _ in range(3):
        for code in await asyncio.gather(*(asyncio.to_thread(post) for _ in range(20))):
            if code:
                phase.expect("keyless 30 MB body", code, frozenset({401}))
            else:
                phase.tried += 1
                phase.bad("keyless 30 MB body: no answer (connection error or timeout)")


async def key_reload(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """A keys file rewritten with a short key (``abc``) and re-read on SIGHUP: the old keys stay, ``abc``
    never works; a good rotation then takes effect."""
    rotated = "hostile-rotated-key-98765432"
    for _ in range(3):
        log_mark = server.log_text().count("API keys not reloaded")
        server.keys_file.write_text("abc\n")
        server.sighup()
        deadline = time.monotonic() + 10
        while server.log_text().count("API keys not reloaded") <= log_mark and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        short = await client.get("/v1/info", headers={"Authorization": "Bearer abc"})
        phase.expect("short key after reload", short.status_code, frozenset({401}))
        old = await client.get("/v1/info")
        phase.expect("old key after a refused reload", old.status_code, frozenset({200}))
        server.keys_file.write_text(f"{KEY}\n{rotated}\n")
        server.sighup()
        deadline = time.monotonic() + 10
        new = await client.get("/v1/info", headers={"Authorization": f"Bearer {rotated}"})
        while new.status_code == 401 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            new = await client.get("/v1/info", headers={"Authorization": f"Bearer {rotated}"})
        phase.expect("rotated key after a good reload", new.status_code, frozenset({200}))
    server.keys_file.write_text(KEY + "\n")
    server.sighup()


async def token_in_log(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    """Signed ``?token=`` URLs (stream and image) are answered, and the access log never shows a token."""
    tokens = []
    for _ in range(3):
        job = await answered(phase, client, "submit", frozenset({202}), client.post("/v1/jobs", json=NATIVE))
        if job is None or job.status_code != 202:
            continue
        view = job.json()
        tokens.append(view["sse_url"].split("token=")[1])
        async with httpx.AsyncClient(base_url=server.url, timeout=HANG_SECONDS) as keyless:
            stream = await answered(phase, keyless, "stream by signed URL", frozenset({200}),
                                    keyless.get(view["sse_url"]))
            done = (await client.get(f"/v1/jobs/{view['job_id']}")).json()
            image_url = (done.get("result") or {}).get("image_url") or done.get("image_url")
            if stream is not None and image_url:
                tokens.append(image_url.split("token=")[-1])
                await answered(phase, keyless, "image by signed URL", frozenset({200}), keyless.get(image_url))
    await asyncio.sleep(0.5)  # the access log line is written after the answer
    log = server.log_text()
    for token in tokens:
        if token in log:
            phase.bad("a signed URL's token is in the access log")
    if tokens and "token=<redacted>" not in log:
        phase.bad("no redacted signed URL in the access log (is the access log on?)")


async def queue_flood(server: Server, client: httpx.AsyncClient, phase: Phase, count: int = 100) -> None:
    """100 concurrent submits against a queue of 4: each 202 or 429; every accepted job is listed once
    and ends (none lost, none twice)."""
    accepted: list[str] = []

    async def one() -> None:
        answer = await answered(phase, client, "submit", frozenset({202, 429}),
                                client.post("/v1/jobs", json={**NATIVE, "steps": 20}))
        if answer is not None and answer.status_code == 202:
            accepted.append(answer.json()["job_id"])

    await asyncio.gather(*(one() for _ in range(count)))
    if len(set(accepted)) != len(accepted):
        phase.bad("a job id was given twice")
    listed = {job["job_id"] for job in (await client.get("/v1/jobs", params={"limit": 1000})).json()["jobs"]}
    for job_id in set(accepted) - listed:
        phase.bad(f"accepted job {job_id} is not listed")
    await cancel_all(client)
    for job_id in accepted:
        await finish(client, job_id, phase, "flooded job")


# Cases whose RSS must not even peak above the tolerance: a client without a key must cost no memory.
PEAK_BOUND_CASES = {"keyless 30 MB bodies"}
Attack = Callable[[Server, httpx.AsyncClient, Phase], Awaitable[Any]]
DOOR_CASES: list[tuple[str, Attack]] = [
    ("unfinished + trickling bodies", unfinished_bodies),
    ("crafted images, 8 entry points", crafted_images),
    ("1 MB / 10 MB prompts", huge_prompts),
    ("resize bomb 16384", resize_bomb),
    ("seeds >= 2^64", big_seeds),
    ("surrogates, NUL, clip 1e400", bad_text),
    ("UTF-16/32 and BOM bodies", not_utf8),
    ("100 multipart files", many_files),
    ("keyless 30 MB bodies", keyless_bodies),
    ("short key on SIGHUP", key_reload),
    ("token in access log", token_in_log),
    ("100 submits, queue of 4", queue_flood),
]
