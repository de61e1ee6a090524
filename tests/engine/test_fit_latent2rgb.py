"""``bench/fit_latent2rgb.py`` on the demo VAEs: the least-squares fit recovers a known map, the latent
representations round-trip through each family's VAE as its pipeline decodes them, and the script
writes the fitted table and both sets' errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from .test_bench import load_bench


@pytest.fixture(scope="module")
def bench() -> object:
    return load_bench("fit_latent2rgb")


def test_the_fit_recovers_a_known_map(bench: object) -> None:
    rng = np.random.default_rng(1)
    latents = rng.normal(size=(500, 16))
    factors, bias = rng.normal(size=(16, 3)), rng.normal(size=3)
    got_factors, got_bias = bench.fit(latents, latents @ factors + bias)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got_factors, factors, atol=1e-9)
    np.testing.assert_allclose(got_bias, bias, atol=1e-9)


@pytest.mark.parametrize(("model", "family"), [("demo-flux1", "flux1"), ("demo-flux2", "flux2"),
                                               ("demo-qwenimage", "qwenimage")])
def test_representations_invert_as_the_pipeline_decodes(
    bench: object, demo_bundle: Path, model: str, family: str
) -> None:
    """encode then decode equals the VAE's own round trip: the normalisation is undone exactly."""
    vae = bench._load_vae(demo_bundle / "models" / model, family)  # type: ignore[attr-defined]
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ours = bench.decode(vae, family, bench.encode(vae, family, pixels))  # type: ignore[attr-defined]
        if family == "qwenimage":
            plain = vae.decode(vae.encode(pixels.unsqueeze(2)).latent_dist.mean).sample[:, :, 0]
        else:
            plain = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    torch.testing.assert_close(ours, plain, atol=1e-4, rtol=1e-4)


def test_the_script_writes_the_table(bench: object, demo_cache_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fit.json"
    argv = ["--model", "demo-flux2", "--count", "2", "--size", "64", "--cache-dir", str(demo_cache_dir),
            "--json", str(out)]
    assert bench.main(argv) == 0  # type: ignore[attr-defined]
    result = json.loads(out.read_text())
    assert (result["family"], result["channels"], len(result["fitted"]["factors"])) == ("flux2", 32, 32)
    assert result["fitted"]["rmse"] <= result["published"]["rmse"]  # least squares on these very pixels
    assert "| fitted here |" in capsys.readouterr().out
