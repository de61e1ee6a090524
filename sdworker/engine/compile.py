"""``--compile``: the UNet's forward through ``torch.compile``, for the sizes named ahead of time.

What a loaded model gets (``apply_compile``, called by ``slots.build_slot``):

- UNet and VAE in ``torch.channels_last`` (convolutions run NHWC kernels, which cuDNN and oneDNN
  prefer), and SDPA attention (diffusers' ``AttnProcessor2_0``; a classic ``AttnProcessor`` is swapped).
- ``torch.compile(dynamic=False, fullgraph=True)`` of the UNet's forward, warmed at load for every
  ``--compile-sizes`` size and batch bucket, so the first job is not the slow one.

Decisions, each made here so the engine and the pipelines stay unaware of it:

- **The pipelines keep the real UNet.** Only an instance-level ``forward`` is set on it (a
  ``CompiledUnet``); ``unet.config``, ``.dtype``, ``add_embedding`` and the rest are untouched.
- **Only warmed shapes run compiled.** ``dynamic=False`` compiles one graph per input shape; a shape
  nobody warmed would cost a compile of minutes in the middle of a job. So the dispatcher runs the
  compiled graph only for a (rows, latent size, prompt length) it warmed, and the eager forward for
  everything else: sizes not listed, long prompts (A1111's 154+ tokens), ControlNet-style extra inputs,
  one-row calls (guidance off: padding to 2 rows would double the work and cost more than compile wins).
- **Batch buckets.** A solo job calls the UNet with 2 x num_images rows (classifier-free guidance),
  cross-job batching with 2 x N rows for N jobs. Rows are padded up to the next bucket (2, 4, 8, ...
  up to 2 x ``max_batch``) by repeating the last row, and the output is sliced back: a UNet row never
  sees another (GroupNorm and attention are per sample), so padding costs work, not correctness.
- **LoRAs never recompile.** Loading a peft adapter wraps Linear layers, which changes the graph, and
  peft's scales would be baked into it as constants. The compiled graph is traced on a *shadow* of the
  UNet: a copy of its module tree that shares every parameter and buffer (no extra weights) and that
  peft never touches. It equals the UNet whenever the UNet computes with its base weights alone: no
  adapter active, or the active set fused into the weights (``LoraAdapters.unet_is_base``). Jobs with
  an active unfused LoRA run eager; every other job, before or after any LoRA, runs the one graph.
- **Model switches.** Every slot gets its own shadow and dispatcher. Dynamo guards on the module's
  structure and config, not its identity, and passes the weights in as graph inputs: a second model of
  the same architecture loaded the same way reuses the first one's compiled code (measured: no new
  graph, warm-up in milliseconds). One whose config differs (even only in key order: a model built in
  code against one loaded from a folder) compiles at its load, from the FX graph cache when it can.
  Either way the compiling happens at load, never during a job.
- **A persistent cache** under ``<cache_dir>/torch-compile`` (``compile_cache_dir``): a restart with
  the same model and sizes reuses Inductor's generated code instead of generating it again.

Compiled output is not bit-equal to eager: Inductor fuses and reorders float operations and picks other
kernels (other accumulation orders); the tests hold the difference to PSNR >= 40 dB.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_FOLDER = "torch-compile"
# Arguments the compiled graph was traced without: a call that sets one runs eager.
_EAGER_ONLY = (
    "class_labels", "timestep_cond", "attention_mask", "cross_attention_kwargs", "down_block_additional_residuals",
    "mid_block_additional_residual", "down_intrablock_additional_residuals", "encoder_attention_mask",
)


def compile_cache_dir(cache_dir: Path) -> Path:
    """Point Inductor's on-disk caches (FX graph cache, AOT autograd cache, compiled C++/Triton kernels)
    at ``<cache_dir>/torch-compile``. Torch reads ``TORCHINDUCTOR_CACHE_DIR`` from the environment each
    time it needs the folder and offers no other setting for it, so this is the one place sdworker
    writes the environment; it must happen before the first compile."""
    folder = Path(cache_dir).expanduser() / CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder.resolve())
    return folder


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Row counts compiled for: powers of two from 2 (one job with guidance) up to 2 x max_batch."""
    buckets = [2]
    while buckets[-1] < 2 * max_batch:
        buckets.append(buckets[-1] * 2)
    return tuple(buckets)


def parse_size(size: str) -> tuple[int, int]:
    """'WxH' (validated by Settings) -> (width, height)."""
    width, height = size.lower().split("x")
    return int(width), int(height)


@dataclass
class CompiledUnet:
    """The UNet's forward: compiled for warmed shapes, eager otherwise. Installed as ``unet.forward``.

    ``allowed`` says, per call, whether the UNet currently computes what the shadow computes (its base
    weights); when it does not (an active unfused LoRA), the call runs eager.
    """

    eager: Callable[..., Any]
    compiled: Callable[..., Any]
    buckets: tuple[int, ...]
    added: tuple[str, ...]  # added_cond_kwargs keys the graph takes (SDXL: text_embeds, time_ids)
    dtype: torch.dtype
    allowed: Callable[[], bool] = lambda: True
    warmed: set[tuple[int, int, int, int]] = field(default_factory=set)  # (rows, h, w, tokens)
    compiled_calls: int = 0
    eager_calls: int = 0
    warm_seconds: float = 0.0

    def __call__(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None, return_dict: bool = True, **kwargs: Any,
    ) -> Any:
        rows = self._rows(sample, encoder_hidden_states, added_cond_kwargs, args, kwargs)
        if rows is None:
            self.eager_calls += 1
            return self.eager(sample, timestep, encoder_hidden_states, *args,
                              added_cond_kwargs=added_cond_kwargs, return_dict=return_dict, **kwargs)
        self.compiled_calls += 1
        out = self._run(rows, sample, timestep, encoder_hidden_states, added_cond_kwargs or {})
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _rows(
        self, sample: torch.Tensor, context: torch.Tensor, added: dict[str, torch.Tensor] | None,
        args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> int | None:
        """The bucket to run this call in, or None for eager."""
        if args or any(kwargs.get(name) is not None for name in _EAGER_ONLY) or set(kwargs) - set(_EAGER_ONLY):
            return None
        if torch.is_grad_enabled() or sample.dtype != self.dtype or tuple(sorted(added or {})) != self.added:
            return None  # warmed under no_grad in the model's dtype, as the pipelines call it
        if sample.ndim != 4 or context.ndim != 3 or not self.allowed():
            return None
        bucket = next((b for b in self.buckets if b >= sample.shape[0]), None)
        key = (bucket, sample.shape[2], sample.shape[3], context.shape[1])
        if bucket is None or sample.shape[0] < 2 or context.shape[0] != sample.shape[0] or key not in self.warmed:
            return None
        return bucket

    def _run(
        self, bucket: int, sample: torch.Tensor, timestep: Any, context: torch.Tensor, added: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        rows = sample.shape[0]
        # One timestep form for every scheduler (0-d int64, 0-d float, per-row): the UNet's first act is
        # ``timesteps.float()`` in its time projection, so float32 per row computes the same numbers, and
        # the graph sees one dtype and shape instead of recompiling per scheduler.
        # Dynamo guards on the grad mode and on each input's dispatch keys, which differ for inference
        # tensors: a caller in ``torch.inference_mode()`` would compile the graph twice more. The graph
        # was warmed under no_grad, so it always runs so, on ordinary tensors (``_pad`` copies the rest).
        with torch.inference_mode(False), torch.no_grad():
            steps = torch.as_tensor(timestep, device=sample.device).to(torch.float32).reshape(-1).expand(rows)
            out = self.compiled(
                _pad(sample, bucket), _pad(steps, bucket), encoder_hidden_states=_pad(context, bucket),
                added_cond_kwargs={k: _pad(v, bucket) for k, v in added.items()} if self.added else None,
                return_dict=False,
            )[0]
        return out[:rows] if bucket != rows else out


def _pad(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with its last row repeated up to ``rows`` rows, contiguous (the graph is specialised
    on strides too: an expanded or sliced input would not match it) and not an inference tensor."""
    if tensor.is_inference():
        tensor = tensor.clone()  # outside inference mode (see _run): an ordinary tensor
    missing = rows - tensor.shape[0]
    if missing > 0:
        tensor = torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])
    return tensor.contiguous()


def shadow_module(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module``'s module tree sharing all its parameters and buffers (no weight memory):
    later changes to the tree (peft wrapping layers) do not reach it, changes to the weights' data
    (fusing a LoRA, ``.to(dtype)``) do."""
    memo: dict[int, Any] = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


def compile_unet(
    unet: Any,
    sizes: Iterable[tuple[int, int]],
    *,
    buckets: tuple[int, ...] = (2,),
    tokens: int = 77,
    cache_dir: Path | None = None,
    allowed: Callable[[], bool] = lambda: True,
    fullgraph: bool = True,
) -> CompiledUnet | None:
    """Compile ``unet``'s forward for latent ``sizes`` ((height, width) in latents) and row ``buckets``,
    warm every combination, and install the dispatcher as ``unet.forward``. Returns the handle (call
    counts, warm-up seconds), or None, the UNet left eager, when it takes inputs this module cannot
    build for warm-up or the compile fails.
    Usable on its own (``bench``): ``compile_unet(pipe.unet, [(64, 64)], cache_dir=...)``."""
    sizes = list(sizes)
    config = unet.config
    added: tuple[str, ...] = ()
    if config.get("addition_embed_type") == "text_time":
        added = ("text_embeds", "time_ids")
    elif config.get("addition_embed_type") is not None or config.get("class_embed_type") is not None:
        log.warning("compile: UNet with %s inputs stays eager", config.get("addition_embed_type"))
        return None
    if not isinstance(config.get("cross_attention_dim"), int):
        log.warning("compile: UNet with cross_attention_dim %r stays eager", config.get("cross_attention_dim"))
        return None
    if cache_dir is not None:
        compile_cache_dir(cache_dir)
    # Dynamo guards on every weight's requires_grad, and loading a peft adapter turns it off on the base
    # weights (peft freezes all but the adapter): off from the start, or the first LoRA would recompile.
    unet.requires_grad_(False)
    shadow = shadow_module(unet)
    handle = CompiledUnet(
        eager=unet.forward,
        compiled=torch.compile(shadow.forward, dynamic=False, fullgraph=fullgraph),
        buckets=tuple(sorted(buckets)), added=added, dtype=unet.dtype, allowed=allowed,
    )
    _raise_recompile_limit(len(handle.buckets) * len(sizes))
    started = time.perf_counter()
    try:
        for height, width in sizes:
            for rows in handle.buckets:
                handle.warmed.add((rows, height, width, tokens))
                _warm(handle, unet, rows, height, width, tokens)
    except Exception:
        # No C++ compiler, a graph break under fullgraph, an Inductor bug: the model still serves, eager,
        # and the log says why (an error, not a warning: --compile was asked for and is not in effect).
        log.error("compile: the UNet could not be compiled; it runs eager", exc_info=True)
        return None
    handle.warm_seconds = time.perf_counter() - started
    handle.compiled_calls = 0
    unet.forward = handle
    log.info("compile: UNet compiled for %d shape(s) in %.1f s (latent sizes %s, rows %s)",
             len(handle.warmed), handle.warm_seconds, sizes, handle.buckets)
    return handle


def _warm(handle: CompiledUnet, unet: Any, rows: int, height: int, width: int, tokens: int) -> None:
    """One call with random inputs of the job's shapes and dtype, under no_grad like the pipelines."""
    config, device, dtype = unet.config, unet.device, unet.dtype
    sample = torch.randn(rows, config.in_channels, height, width, device=device, dtype=dtype)
    context = torch.randn(rows, tokens, config.cross_attention_dim, device=device, dtype=dtype)
    added = {}
    if handle.added:
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(rows, text_dim, device=device, dtype=dtype),
                 "time_ids": torch.full((rows, 6), float(height * 8), device=device, dtype=dtype)}
    with torch.no_grad():
        handle._run(rows, sample, torch.tensor(500), context, added)


_compiled_shapes = 0


def _raise_recompile_limit(shapes: int) -> None:
    """Dynamo keeps at most ``recompile_limit`` graphs per code object, and every UNet of a process
    shares its forward's code (diffusers' LoRA-scale wrapper around it): each model's warmed shapes
    count against it. Past the limit dynamo would silently run eager, so the limit grows with what was
    compiled."""
    global _compiled_shapes
    _compiled_shapes += shapes
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, _compiled_shapes + 8)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * config.recompile_limit)


def use_sdpa(module: Any) -> int:
    """Swap classic attention processors for SDPA ones (``AttnProcessor2_0``, diffusers' default when
    torch has SDPA; something may have set the slower one). Returns how many were swapped."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = getattr(module, "attn_processors", None)
    if not processors:
        return 0
    classic = [name for name, proc in processors.items() if type(proc) is AttnProcessor]
    if classic:
        module.set_attn_processor({name: AttnProcessor2_0() if name in classic else proc
                                   for name, proc in processors.items()})
    return len(classic)


def apply_compile(
    pipe: Any, *, sizes: Iterable[str], max_batch: int, cache_dir: Path, allowed: Callable[[], bool]
) -> CompiledUnet | None:
    """Everything ``--compile`` does to one loaded model's pipeline (see the module docstring). It
    changes the pipeline's UNet and VAE in place: an eager engine to compare with needs its own pipeline."""
    for module in (pipe.unet, pipe.vae):
        module.to(memory_format=torch.channels_last)
        if use_sdpa(module):
            log.info("compile: %s attention switched to SDPA", type(module).__name__)
    scale = getattr(pipe, "vae_scale_factor", 8)
    latent_sizes = [(height // scale, width // scale) for width, height in map(parse_size, sizes)]
    tokens = int(getattr(pipe.tokenizer, "model_max_length", 77) or 77) if getattr(pipe, "tokenizer", None) else 77
    if not latent_sizes:
        log.warning("compile: no --compile-sizes given; the UNet stays eager (channels_last and SDPA only)")
        return None
    return compile_unet(pipe.unet, latent_sizes, buckets=batch_buckets(max_batch), tokens=tokens,
                        cache_dir=cache_dir, allowed=allowed)
