"""GGUF transformer files (``.gguf``, how FLUX.1 and Qwen-Image are published for small cards): the
library reads a file's tensor names and shapes here, the way it reads a safetensors header, and the
demo bundle writes one with the ``gguf`` package (llama.cpp's own writer).

Loading goes through diffusers (``from_single_file`` with ``GGUFQuantizationConfig``, in the family's
adapter): quantised tensors stay packed in memory and are dequantised per layer as the model runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GGUF_SUFFIX = ".gguf"


def read_gguf_header(path: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"shape": [...], "dtype": "Q8_0"}}``, like ``read_safetensors_header`` (shapes in
    PyTorch's order; GGUF stores them innermost first). Reads the header only (the data is memory-mapped,
    not read). ``ValueError`` for a file that is not GGUF."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"not a readable GGUF file: {exc}") from exc
    return {t.name: {"shape": [int(n) for n in reversed(t.shape.tolist())], "dtype": t.tensor_type.name}
            for t in reader.tensors}


def write_gguf(state: dict[str, Any], path: Path, *, architecture: str = "flux") -> None:
    """``state`` (name -> float tensor) as a GGUF file: 2-D weights whose rows fill whole Q8_0 blocks (32
    values) in Q8_0, as city96's FLUX conversions store them; the rest (biases, norms) in F32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=architecture)
    for name, tensor in state.items():
        array = tensor.detach().float().cpu().numpy()
        if array.ndim == 2 and array.shape[-1] % 32 == 0:
            packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
