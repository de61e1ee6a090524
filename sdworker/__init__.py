"""sdworker: a Stable Diffusion worker service with live previews over Server-Sent Events."""

__version__ = "0.1.0"


def _quiet_optional_imports() -> None:
    """torchao (``--quantize``) logs at import what it cannot load on this machine (its CUDA-only
    extensions on a CPU host, deprecations through torch's pytree), and diffusers' torchao quantizer
    what torchao version it found: every command would print them on stderr whether it quantises or
    not. Raised to errors here, before anything imports them; nothing else is configured."""
    import logging

    for name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)


_quiet_optional_imports()
