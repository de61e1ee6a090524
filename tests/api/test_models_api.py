"""The model library through the API (both backends): listing, picking a model per job, LoRAs and
``clip_skip`` at submit, ``loading_model`` events, the default size following the model's family."""

from __future__ import annotations

from dataclasses import replace

from sdworker.domain.catalog import LoraInfo, ModelInfo
from sdworker.engine.fake import FakeEngine

from .helpers import SMALL, backend_name, parse_sse, running_app


class SizedFakeEngine(FakeEngine):
    """A fake library whose second model is an SDXL-like one (native 1024 would be slow; 96 is not)."""

    def list_models(self) -> tuple[ModelInfo, ...]:
        models = super().list_models()
        return tuple(replace(m, family="sdxl", native_size=96) if m.name == "xl" else m for m in models)

    def list_loras(self) -> tuple[LoraInfo, ...]:
        return tuple(replace(lora, family="sdxl") if lora.name.startswith("xl") else lora
                     for lora in super().list_loras())


def library_engine() -> SizedFakeEngine:
    return SizedFakeEngine(models=("fake", "xl"), loras=("style", "xl-style"))


async def test_models_and_loras_are_listed_with_their_details() -> None:
    async with running_app(library_engine()) as app:
        models = (await app.client.get("/v1/models")).json()
        assert models["object"] == "list"
        by_id = {m["id"]: m for m in models["data"]}
        assert set(by_id) == {"fake", "xl"}
        assert by_id["fake"] == {
            "id": "fake", "object": "model", "owned_by": "sdworker", "created": 0, "architecture": "sd1",
            "hash": "0000000000", "loaded": True, "native_size": 512, "default": True, "variant": None,
            "defaults": {"steps": 20, "guidance_scale": 7.5, "width": 512, "height": 512}, "size_multiple": 8,
            "size_bytes": None,  # the fake engine's models have no files to size
            "edit_references": None,  # not an edit model
            "error": None,  # a usable model
        }
        assert by_id["xl"]["architecture"] == "sdxl" and by_id["xl"]["native_size"] == 96
        assert not by_id["xl"]["default"]
        loras = (await app.client.get("/v1/loras")).json()["data"]
        assert {(lora["name"], lora["family"], lora["format"]) for lora in loras} == {
            ("style", "sd1", "peft"), ("xl-style", "sdxl", "peft")}
        info = (await app.client.get("/v1/info")).json()
        assert [m["id"] for m in info["library"]] == ["fake", "xl"]
        assert [lora["name"] for lora in info["loras"]] == ["style", "xl-style"]
        refreshed = await app.client.post("/v1/models/refresh")
        assert refreshed.status_code == 200 and refreshed.json()["object"] == "list"


async def test_a_job_picks_its_model_and_gets_its_native_size_and_a_loading_event() -> None:
    async with running_app(library_engine()) as app:
        plain = await app.submit(width=None, height=None)
        xl = await app.submit(model="xl", width=None, height=None, loras=[{"path": "xl-style", "strength": 0.5}],
                              clip_skip=2)
        done = await app.wait_status(xl, "completed", "failed")
        assert done["status"] == "completed", done
        assert (done["width"], done["height"]) == (96, 96)
        assert done["parameters"]["model"] == "xl"
        assert done["parameters"]["loras"] == [{"path": "xl-style", "strength": 0.5}]
        assert done["parameters"]["clip_skip"] == 2
        first = await app.wait_status(plain, "completed")
        assert (first["width"], first["height"]) == (512, 512)
        events = parse_sse((await app.client.get(f"/v1/jobs/{xl}/stream")).text)
        loading = [(e[1], e[2]["model"], e[2]["phase"]) for e in events if e[1] == "loading_model"]
        assert loading == [("loading_model", "xl", "started"), ("loading_model", "xl", "finished")]
        names = [e[1] for e in events]
        assert names.index("loading_model") > names.index("started") and names[-2:] == ["complete", "end"]
        plain_events = parse_sse((await app.client.get(f"/v1/jobs/{plain}/stream")).text)
        assert "loading_model" not in [e[1] for e in plain_events]  # the default model was in memory


async def test_unknown_models_and_loras_are_4xx_naming_the_field_and_queue_nothing() -> None:
    async with running_app(library_engine()) as app:
        cases = [
            ({"model": "nope"}, 404, "model_not_found", "model"),
            ({"loras": [{"path": "nope", "strength": 1.0}]}, 404, "lora_not_found", "loras"),
            ({"prompt": "a cat <lora:nope:0.7>"}, 404, "lora_not_found", "prompt"),
            ({"loras": [{"path": "style"}, {"path": "style.safetensors"}]}, 422, "invalid_request", "loras"),
        ]
        for body, status, code, field in cases:
            response = await app.client.post("/v1/jobs", json={"prompt": "a cat", "steps": 2, **body})
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert (error["code"], error["field"]) == (code, field), (body, error)
        assert (await app.client.get("/v1/jobs")).json()["jobs"] == []
        job = await app.submit(prompt="a cat <lora:style:0.7>", loras=[{"path": "style", "strength": -1.5}])
        assert (await app.wait_status(job, "completed", "failed"))["status"] == "completed"


async def test_the_compat_door_still_falls_back_to_the_default_model() -> None:
    async with running_app(library_engine()) as app:
        body = {"prompt": "a cat", "model": "dall-e-3", "size": "64x64", "steps": 2, "seed": 1}
        response = await app.client.post("/v1/images/generations", json=body)
        assert response.status_code == 200, response.text
        if backend_name() != "redis":  # the engine runs in this process
            assert app.engine.current_model == "fake"


class BrokenModelEngine(SizedFakeEngine):
    """A library with a model whose files cannot be used (as the engine lists an unreadable file)."""

    def list_models(self) -> tuple[ModelInfo, ...]:
        broken = ModelInfo("broken", "unknown", "", "", 0, error="not a readable model: bad header length")
        return (*super().list_models(), broken)


async def test_a_broken_model_is_listed_with_its_error_and_offered_by_no_door() -> None:
    async with running_app(BrokenModelEngine(models=("fake", "xl"))) as app:
        by_id = {m["id"]: m for m in (await app.client.get("/v1/models")).json()["data"]}
        assert by_id["broken"]["error"] == "not a readable model: bad header length"
        assert by_id["fake"]["error"] is None
        titles = [m["model_name"] for m in (await app.client.get("/sdapi/v1/sd-models")).json()]
        assert "broken" not in titles and "xl" in titles
        refused = await app.client.post("/v1/jobs", json={"prompt": "x", "model": "broken", **SMALL})
        assert refused.status_code in (400, 404) and refused.json()["error"]["field"] == "model", refused.text
