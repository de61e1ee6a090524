"""``--compile`` for the flow-matching families: the transformer's repeated blocks through
``torch.compile`` (regional compilation, what diffusers' ``compile_repeated_blocks`` does), warmed at
load for the ``--compile-sizes`` sizes, like the UNet (``engine.compile``).

Why blocks and not the whole transformer: a FLUX.1 transformer is 19 double and 38 single blocks of
two classes. Dynamo compiles each class's ``forward`` once and every block of that class reuses the
graph (the weights are graph inputs, not constants), so compiling costs about as much as two blocks and
runs as fast as compiling everything (diffusers measures the same speed-up at a fraction of the time).

Decisions, as in ``engine.compile``:

- **Which blocks.** The class names the transformer declares in ``_repeated_blocks`` (FLUX.1,
  Qwen-Image, Z-Image do). SD 3.5's ``SD3Transformer2DModel`` declares none: its repeated block is
  ``JointTransformerBlock`` (``REPEATED_BLOCKS`` names it).
- **Only warmed calls run compiled.** The graph is specialised on its inputs' shapes (``dynamic=False``);
  a call nobody warmed would compile for seconds to minutes in the middle of a job. Each block's
  dispatcher remembers the signature (shapes, dtypes, grad and inference mode, the plain values) of
  every call made while warming, and runs eager for any other: another size, another batch, a prompt
  that encodes to another length.
- **Warming is one short generation per size** through the model's own pipeline, with the arguments
  the family's adapter gives a job (``FlowAdapter.call_arguments``), so the warmed signatures are the
  ones jobs make: one image, the family's default guidance (a CFG family warms its two-row call). The
  text encoders of FLUX.1, SD 3.5 and Qwen-Image pad prompts to a fixed length, so any prompt matches;
  Z-Image's does not (its sequence is image + prompt tokens), so there only prompts of the warmed
  length run compiled and the others eager: compile brings little to Z-Image yet.
- **LoRAs never recompile.** As for the UNet: the graph is traced on a *shadow* of each block, a copy
  of its module tree sharing every weight, which peft never wraps. A job with an active unfused LoRA
  runs the blocks eager; every job before and after it runs the one graph (``allowed``).
- **Model switches.** Dynamo guards on the module's code and structure, not on which weights it holds:
  a second model of the same architecture runs the first one's graphs (its warm-up finds them).

Compiled output is not bit-equal to eager (Inductor fuses and reorders float operations): the tests
hold it to PSNR >= 40 dB.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdworker.engine.compile import compile_cache_dir, parse_size, shadow_module

log = logging.getLogger(__name__)

REPEATED_BLOCKS = {"SD3Transformer2DModel": ("JointTransformerBlock",)}  # does not declare _repeated_blocks


def repeated_block_names(transformer: Any) -> tuple[str, ...]:
    declared: Any = getattr(transformer, "_repeated_blocks", None) or REPEATED_BLOCKS.get(type(transformer).__name__)
    return tuple(str(name) for name in declared or ())


@dataclass
class WarmState:
    """Shared by a model's block dispatchers: whether the model is being warmed right now."""

    warming: bool = False


@dataclass
class CompiledBlock:
    """One block's forward: the shadow's compiled graph for a warmed signature, eager otherwise."""

    eager: Callable[..., Any]
    compiled: Callable[..., Any]
    state: WarmState
    allowed: Callable[[], bool]
    warmed: set[Any] = field(default_factory=set)
    compiled_calls: int = 0
    eager_calls: int = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = signature((args, kwargs))
        if self.state.warming:
            self.warmed.add(key)
        elif key not in self.warmed or not self.allowed():
            self.eager_calls += 1
            return self.eager(*args, **kwargs)
        self.compiled_calls += 1
        return self.compiled(*args, **kwargs)


def signature(value: Any) -> Any:
    """What dynamo specialises a call on, as a hashable key: tensors by shape, strides (Z-Image's rotary
    table is a view whose strides follow the prompt's length), dtype, device, grad and inference flags;
    containers by their items; plain values by value; anything else by type."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.stride(), value.dtype, value.device.type, value.requires_grad,
                value.is_inference())
    if isinstance(value, tuple | list):
        return (type(value).__name__, *(signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", *sorted((k, signature(v)) for k, v in value.items()))
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return ("other", type(value).__name__)


@dataclass
class CompiledBlocks:
    """A model's compiled blocks (the slot keeps it: call counts for tests and benchmarks)."""

    blocks: list[CompiledBlock]
    classes: tuple[str, ...]
    warm_seconds: float = 0.0

    @property
    def compiled_calls(self) -> int:
        return sum(block.compiled_calls for block in self.blocks)

    @property
    def eager_calls(self) -> int:
        return sum(block.eager_calls for block in self.blocks)


def compile_blocks(
    transformer: Any, *, allowed: Callable[[], bool] = lambda: True, fullgraph: bool = True
) -> tuple[CompiledBlocks, WarmState] | None:
    """Install a compiled dispatcher on each repeated block of ``transformer`` (not warmed yet: see
    ``apply_block_compile``). None when the transformer names no repeated block."""
    classes = repeated_block_names(transformer)
    if not classes:
        log.warning("compile: %s names no repeated blocks; it stays eager", type(transformer).__name__)
        return None
    # Dynamo guards on every weight's requires_grad, and peft turns it off on the base weights when a
    # LoRA loads: off from the start, or the first LoRA would recompile.
    transformer.requires_grad_(False)
    state = WarmState()
    blocks: list[CompiledBlock] = []
    for module in transformer.modules():
        if type(module).__name__ in classes:
            shadow = shadow_module(module)
            block = CompiledBlock(eager=module.forward, state=state, allowed=allowed,
                                  compiled=torch.compile(shadow.forward, dynamic=False, fullgraph=fullgraph))
            module.forward = block
            blocks.append(block)
    _raise_recompile_limit(len(blocks))
    return CompiledBlocks(blocks, classes), state


def _raise_recompile_limit(blocks: int) -> None:
    """Each warmed signature is one graph of the block's code object; several models and sizes add up."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 64)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * config.recompile_limit, blocks)


def apply_block_compile(
    pipe: Any, *, sizes: Iterable[str], warm: Callable[[int, int], None], cache_dir: Path,
    allowed: Callable[[], bool],
) -> CompiledBlocks | None:
    """Everything ``--compile`` does to a flow model's pipeline: compile its transformer's repeated
    blocks and warm them with one two-step generation per size (the first job is not the slow one).
    ``warm(width, height)``: one short job of that size (``warm_job``).
    On any failure the blocks go back to eager and the log says why."""
    shapes = [parse_size(size) for size in sizes]
    if not shapes:
        log.warning("compile: no --compile-sizes given; the transformer stays eager")
        return None
    compile_cache_dir(cache_dir)
    transformer = pipe.transformer
    made = compile_blocks(transformer, allowed=allowed)
    if made is None:
        return None
    handle, state = made
    started = time.perf_counter()
    state.warming = True
    try:
        for width, height in shapes:
            warm(width, height)
    except Exception:
        log.error("compile: the transformer blocks could not be compiled; they run eager", exc_info=True)
        for module in transformer.modules():
            if isinstance(module.__dict__.get("forward"), CompiledBlock):
                del module.forward
        return None
    finally:
        state.warming = False
    handle.warm_seconds = time.perf_counter() - started
    log.info("compile: %d %s blocks compiled in %.1f s for %s", len(handle.blocks), "/".join(handle.classes),
             handle.warm_seconds, ", ".join(f"{w}x{h}" for w, h in shapes))
    return handle


def warm_job(adapter: Any, model: Any, guidance_scale: float) -> Callable[[int, int], None]:
    """A two-step text-to-image call of ``model`` at a size, with the arguments a job gets."""
    from sdworker.domain.request import GenerationRequest

    def warm(width: int, height: int) -> None:
        request = GenerationRequest("a photo", width=width, height=height, num_inference_steps=2,
                                    guidance_scale=guidance_scale)
        pipe, kwargs = adapter.call_arguments(model, request, request.prompt, [torch.Generator("cpu").manual_seed(0)])
        pipe(**kwargs, output_type="latent")

    return warm
