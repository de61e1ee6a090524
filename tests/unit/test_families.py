"""The per-family facts: each family's numbers hang together, and the rules they drive refuse and
round the way the docs say."""

from __future__ import annotations

import pytest

from sdworker.domain.families import FamilyFacts, all_families, family_facts, family_for_index
from sdworker.errors import InvalidRequest


@pytest.mark.parametrize("facts", all_families(), ids=lambda f: f.name)
def test_latent_coefficients_have_one_rgb_row_per_channel(facts: FamilyFacts) -> None:
    latent = facts.latent
    assert len(latent.factors) == latent.channels
    assert all(len(row) == 3 for row in latent.factors)
    assert len(latent.bias) == 3
    assert facts.native_size % facts.size_multiple == 0
    assert "" in facts.defaults


def test_native_sizes_and_multiples() -> None:
    assert [(f.name, f.native_size, f.size_multiple) for f in all_families()] == [
        ("sd1", 512, 8), ("sd2", 768, 8), ("sdxl", 1024, 8), ("flux1", 1024, 16), ("sd3", 1024, 16),
        ("zimage", 1024, 16), ("qwenimage", 1328, 16), ("flux2", 1024, 16),
    ]


def test_flux1_defaults_per_variant() -> None:
    flux = family_facts("flux1")
    assert (flux.defaults_for("dev").steps, flux.defaults_for("dev").guidance) == (28, 3.5)
    assert (flux.defaults_for("schnell").steps, flux.defaults_for("schnell").guidance) == (4, 0.0)
    assert flux.defaults_for("unknown-variant") == flux.defaults_for("")
    assert flux.guidance == "distilled" and "negative_prompt" in flux.ignored_fields
    assert flux.latent.channels == 16 and flux.latent.patch == 2


def test_size_rule_names_the_field_and_the_family() -> None:
    flux = family_facts("flux1")
    flux.check_size(1024, 768)
    with pytest.raises(InvalidRequest, match=r"height: 520 is not a positive multiple of 16 \(the FLUX.1") as caught:
        flux.check_size(512, 520)
    assert caught.value.field == "height"
    family_facts("sd1").check_size(512, 520)  # a multiple of 8 is fine for SD
    assert flux.round_size(1000) == 992 and flux.round_size(5) == 16 and family_facts("sd1").round_size(1000) == 1000


def test_scheduler_rule() -> None:
    family_facts("sd1").check_scheduler("dpmpp_2m")
    family_facts("flux1").check_scheduler("euler")
    family_facts("flux1").check_scheduler(None)
    with pytest.raises(InvalidRequest, match=r"'dpmpp_2m' does not apply to the FLUX\.1 family") as caught:
        family_facts("flux1").check_scheduler("dpmpp_2m")
    assert caught.value.field == "scheduler"


def test_model_index_classes_map_to_families() -> None:
    assert family_for_index("FluxPipeline") is family_facts("flux1")
    assert family_for_index("Flux2KleinPipeline") is family_for_index("Flux2Pipeline") is family_facts("flux2")
    assert family_for_index("StableDiffusionInpaintPipeline") is None  # the UNet path: 9 channels, variant inpainting
    assert family_for_index("StableDiffusionXLPipeline") is family_facts("sdxl")
    assert family_for_index("StableDiffusionPipeline") is family_facts("sd1")
    assert family_for_index("SomethingElse") is None


def test_guidance_meaning_and_defaults_of_the_cfg_families() -> None:
    sd3, zimage = family_facts("sd3"), family_facts("zimage")
    assert sd3.guidance == zimage.guidance == "cfg" and "negative_prompt" not in sd3.ignored_fields
    assert (sd3.defaults_for("large").steps, sd3.defaults_for("large").guidance) == (28, 3.5)
    assert (sd3.defaults_for("turbo").steps, sd3.defaults_for("turbo").guidance) == (4, 0.0)
    assert (zimage.defaults_for("turbo").steps, zimage.defaults_for("turbo").guidance) == (8, 0.0)
    assert zimage.latent.factors == family_facts("flux1").latent.factors and zimage.latent.patch == 1


def test_flux2_defaults_per_variant() -> None:
    flux2 = family_facts("flux2")
    assert (flux2.defaults_for("klein").steps, flux2.defaults_for("klein").guidance) == (4, 1.0)
    assert (flux2.defaults_for("klein-base").steps, flux2.defaults_for("klein-base").guidance) == (50, 4.0)
    assert (flux2.defaults_for("dev").steps, flux2.defaults_for("dev").guidance) == (50, 4.0)
    assert "negative_prompt" in flux2.ignored_fields and flux2.max_prompt_tokens == 512
    assert flux2.latent.channels == 32 and flux2.latent.patch == 2
