"""What the hostile-client run found between the schema and the server (issue 20, "also found"): a
request the OpenAPI description allows is one the server accepts (or the description states the
bound), every answer a route gives is described, non-UTF-8 JSON is refused as the README says, and a
form with too many files is a 4xx about the form, not "malformed JSON"."""

from __future__ import annotations

import json
import re
from typing import Any

from .helpers import running_app


def prop(schema: dict[str, Any], component: str, name: str) -> dict[str, Any]:
    return dict(schema["components"]["schemas"][component]["properties"][name])


def allows(option: dict[str, Any], value: str) -> bool:
    pattern = option.get("pattern") or next((o["pattern"] for o in option.get("anyOf", ()) if "pattern" in o), None)
    return pattern is None or re.search(pattern, value) is not None


async def test_json_must_be_utf8_a_utf8_bom_is_ignored() -> None:
    async with running_app() as app:
        body = json.dumps({"prompt": "a", "steps": 2, "width": 64, "height": 64})
        headers = {"content-type": "application/json"}
        for encoded in (body.encode("utf-16"), body.encode("utf-16-le"), body.encode("utf-32")):
            answer = await app.client.post("/v1/jobs", content=encoded, headers=headers)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == "invalid_json" and "UTF-8" in answer.json()["message"]
        with_bom = await app.client.post("/v1/jobs", content=b"\xef\xbb\xbf" + body.encode(), headers=headers)
        assert with_bom.status_code == 202, with_bom.text


async def test_too_many_files_in_a_form_is_a_4xx_about_the_form() -> None:
    async with running_app() as app:
        files = [("image[]", (f"{i}.png", b"x")) for i in range(100)]
        answer = await app.client.post("/v1/images/edits", data={"prompt": "a"}, files=files)
        assert answer.status_code == 400, answer.text
        message = answer.json()["error"]["message"]
        assert "malformed JSON" not in message and "files" in message.lower()
        assert answer.json()["error"]["param"] == "body"


async def test_the_schema_states_what_the_server_refuses() -> None:
    async with running_app(max_steps=30, max_images=4) as app:
        schema = (await app.client.get("/openapi.json")).json()
        # OpenAI size "": refused by the server, so the schema's pattern excludes it.
        size = prop(schema, "ImagesRequest", "size")
        assert not allows(size, "") and allows(size, "64x64") and allows(size, "auto")
        answer = await app.client.post("/v1/images/generations", json={"prompt": "0", "size": ""})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "size"
        # A1111 n_iter 55, native n 9, steps 31: the maxima are this server's limits.
        for component, name, limit in (("Txt2ImgRequest", "n_iter", 4), ("Txt2ImgRequest", "batch_size", 4),
                                       ("Img2ImgRequest", "steps", 30), ("JobRequest", "n", 4),
                                       ("JobRequest", "steps", 30), ("ImagesRequest", "n", 4)):
            options = [prop(schema, component, name), *prop(schema, component, name).get("anyOf", ())]
            assert [o["maximum"] for o in options if o.get("type") == "integer"] == [limit], (component, name)
        # Last-Event-ID "null": the schema's pattern excludes what the server refuses.
        stream = schema["paths"]["/v1/jobs/{job_id}/stream"]["get"]
        for parameter in stream["parameters"]:
            if parameter["name"] in ("last-event-id", "last_event_id"):
                assert not allows(parameter["schema"], "null") and allows(parameter["schema"], "12")
        job_id = await app.submit()
        await app.wait_status(job_id, "completed")
        refused = await app.client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "null"})
        assert refused.status_code == 422


async def test_every_answer_a_route_gives_is_described() -> None:
    async with running_app() as app:
        schema = (await app.client.get("/openapi.json")).json()
        assert "202" in schema["paths"]["/v1/jobs/{job_id}"]["delete"]["responses"]
        stream = schema["paths"]["/v1/jobs/{job_id}/stream"]["get"]["responses"]["200"]["content"]
        assert "text/event-stream" in stream
        for path in ("/v1/images/generations", "/v1/images/edits"):
            content = schema["paths"][path]["post"]["responses"]["200"]["content"]
            assert {"application/json", "text/event-stream"} <= set(content), path
