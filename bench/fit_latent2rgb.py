"""Fit latent2rgb coefficients for a model family's latent space, and check the published set.

latent2rgb previews (``sdworker.previews.latent2rgb``) map each latent pixel to RGB with one C x 3
matrix and a bias. This script measures what such a map can do for a VAE: it encodes images, turns the
latents into the representation the denoising loop holds (the one the family's set applies to, see
below), decodes them with the VAE, shrinks the decoded picture to latent size (area average) and solves
``rgb ~ latents . F + bias`` by least squares over every latent pixel. It prints the fitted table and the
RMSE (in the preview's [-1, 1] units) of the fitted set and of the family's published set
(``sdworker.domain.families``) on the same pixels, and writes both as JSON.

The latent representations (what ``representation`` means for each family):

- sd1, sd2, sdxl: ``z * scaling_factor``.
- flux1, sd3, zimage: ``(z - shift_factor) * scaling_factor``, FLUX's unpacked from 2x2 patches.
- qwenimage: ``(z - latents_mean) / latents_std`` (Wan 2.1's VAE, one frame), unpacked.
- flux2: the 32 VAE channels batch-norm normalised (patchify, ``(z - mean) / sqrt(var + eps)``,
  un-patchify): the loop's 128-channel tokens unpacked.

    .venv/bin/python bench/fit_latent2rgb.py --model /models/FLUX.1-dev --images ~/photos --size 512
    .venv/bin/python bench/fit_latent2rgb.py --model demo-sd15        # the demo bundle's (random) VAE

``--images DIR``: PNG/JPEG photos (a few dozen varied ones make a good fit); without it, seeded smooth
colour fields are used, enough to check a set, weaker for fitting one. Random-weight VAEs (the demo)
give numbers that mean nothing about real models: they only show the script runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `sdworker` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from sdworker.domain.families import FamilyFacts, family_facts, family_for_index  # noqa: E402

# What each family's coefficients apply to (the module docstring says why).
REPRESENTATIONS = {
    "sd1": "z * scaling_factor", "sd2": "z * scaling_factor", "sdxl": "z * scaling_factor",
    "flux1": "(z - shift_factor) * scaling_factor, unpacked from 2x2 patches",
    "sd3": "(z - shift_factor) * scaling_factor", "zimage": "(z - shift_factor) * scaling_factor, unpacked",
    "qwenimage": "(z - latents_mean) / latents_std, one frame, unpacked",
    "flux2": "32 VAE channels, batch-norm normalised over the 2x2-patchified 128 (the loop's tokens unpacked)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a diffusers folder, or a demo model name (demo-sd15...)")
    parser.add_argument("--family", help="override the family read from model_index.json")
    parser.add_argument("--images", type=Path, help="folder of PNG/JPEG images (default: synthetic colour fields)")
    parser.add_argument("--count", type=int, default=16, help="synthetic images (or the most images read)")
    parser.add_argument("--size", type=int, default=256, help="images are resized to this square size")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache", help="where the demo bundle is built")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "fit_latent2rgb.json")
    args = parser.parse_args(argv)

    folder = _model_folder(args.model, args.cache_dir)
    facts = family_facts(args.family) if args.family else _family(folder)
    vae = _load_vae(folder, facts.name)
    images = _images(args.images, args.count, args.size)
    latents, targets = _samples(vae, facts.name, images)
    factors, bias = fit(latents, targets)
    fitted_rmse = rmse(latents, targets, factors, bias)
    published = facts.latent
    published_rmse = rmse(latents, targets, np.array(published.factors), np.array(published.bias))
    result: dict[str, Any] = {
        "model": args.model, "family": facts.name, "representation": REPRESENTATIONS[facts.name],
        "channels": int(latents.shape[1]), "images": len(images), "size": args.size,
        "latent_pixels": int(latents.shape[0]),
        "fitted": {"factors": np.round(factors, 4).tolist(), "bias": np.round(bias, 4).tolist(),
                   "rmse": fitted_rmse},
        "published": {"source": published.source, "rmse": published_rmse},
    }
    _print(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json}")
    return 0


# -- fitting ------------------------------------------------------------------------------------------


def fit(latents: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares ``targets (N, 3) ~ latents (N, C) . F + bias``: (F (C, 3), bias (3,))."""
    design = np.concatenate([latents, np.ones((latents.shape[0], 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, targets, rcond=None)
    return solution[:-1], solution[-1]


def rmse(latents: np.ndarray, targets: np.ndarray, factors: np.ndarray, bias: np.ndarray) -> float:
    return float(np.sqrt(np.mean((latents @ factors + bias - targets) ** 2)))


def _samples(vae: Any, family: str, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """(latent pixels (N, C), decoded RGB shrunk to latent size (N, 3)) over all images."""
    rows, colours = [], []
    for image in images:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            loop = encode(vae, family, pixels)
            decoded = decode(vae, family, loop).clamp(-1, 1)
        small = F.interpolate(decoded, size=loop.shape[-2:], mode="area")
        rows.append(loop[0].flatten(1).T.double().numpy())
        colours.append(small[0].flatten(1).T.double().numpy())
    return np.concatenate(rows), np.concatenate(colours)


def encode(vae: Any, family: str, pixels: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> latents as the family's denoising loop holds them (unpacked, B x C x h x w)."""
    config = vae.config
    if family == "qwenimage":
        z = vae.encode(pixels.unsqueeze(2)).latent_dist.mean[:, :, 0]
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1)
        return (z - mean) / std
    z = vae.encode(pixels).latent_dist.mean
    if family == "flux2":
        from diffusers import Flux2KleinPipeline

        patched = Flux2KleinPipeline._patchify_latents(z)
        mean = vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + config.batch_norm_eps)
        normalised: torch.Tensor = Flux2KleinPipeline._unpatchify_latents((patched - mean) / std)
        return normalised
    shift = config.get("shift_factor") or 0.0
    return (z - shift) * config.scaling_factor


def decode(vae: Any, family: str, loop: torch.Tensor) -> torch.Tensor:
    """What the family's pipeline does after its loop, up to the VAE's [-1, 1] pixels."""
    if family == "qwenimage":
        from sdworker.engine.families.qwenimage import denormalise

        return vae.decode(denormalise(vae, loop), return_dict=False)[0][:, :, 0]
    if family == "flux2":
        from sdworker.engine.families.flux2 import denormalise as flux2_denormalise

        return vae.decode(flux2_denormalise(vae, loop), return_dict=False)[0]
    shift = vae.config.get("shift_factor") or 0.0
    return vae.decode(loop / vae.config.scaling_factor + shift, return_dict=False)[0]


# -- inputs -------------------------------------------------------------------------------------------


def _model_folder(model: str, cache_dir: Path) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from sdworker.engine.demo_model import MODELS_DIR, ensure_demo_bundle

    demo = ensure_demo_bundle(cache_dir) / MODELS_DIR / model
    if not demo.is_dir():
        raise SystemExit(f"--model {model}: not a folder, nor a model of the demo bundle")
    return demo


def _family(folder: Path) -> FamilyFacts:
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    name = str(index.get("_class_name", ""))
    facts = family_for_index(name)
    if facts is not None:
        return facts
    return family_facts("sdxl" if "XL" in name else "sd1")  # SD 2.x shares SD 1.x's VAE and latent space


def _load_vae(folder: Path, family: str) -> Any:
    import diffusers

    cls = {"qwenimage": diffusers.AutoencoderKLQwenImage, "flux2": diffusers.AutoencoderKLFlux2}.get(
        family, diffusers.AutoencoderKL)
    return cls.from_pretrained(str(folder), subfolder="vae", torch_dtype=torch.float32).eval()


def _images(folder: Path | None, count: int, size: int) -> list[Image.Image]:
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise SystemExit(f"--images {folder}: no PNG/JPEG/WebP files")
        return [Image.open(p).convert("RGB").resize((size, size), Image.Resampling.LANCZOS) for p in files[:count]]
    rng = np.random.default_rng(0)
    fields = []
    for _ in range(count):  # smooth fields of random colours: every hue, soft edges, like photos at 1/8
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC)
        fields.append(image)
    return fields


def _print(result: dict[str, Any]) -> None:
    print(f"latent2rgb fit: {result['model']} ({result['family']}), {result['channels']} channels, "
          f"{result['images']} images at {result['size']} px, {result['latent_pixels']} latent pixels")
    print(f"representation: {result['representation']}")
    print()
    print("| channel | R | G | B |")
    print("|---|---|---|---|")
    for index, row in enumerate(result["fitted"]["factors"]):
        print(f"| {index} | {row[0]:+.4f} | {row[1]:+.4f} | {row[2]:+.4f} |")
    bias = result["fitted"]["bias"]
    print(f"| bias | {bias[0]:+.4f} | {bias[1]:+.4f} | {bias[2]:+.4f} |")
    print()
    print("| set | RMSE ([-1, 1] units) |")
    print("|---|---|")
    print(f"| fitted here | {result['fitted']['rmse']:.4f} |")
    print(f"| published ({result['published']['source']}) | {result['published']['rmse']:.4f} |")


if __name__ == "__main__":
    raise SystemExit(main())
