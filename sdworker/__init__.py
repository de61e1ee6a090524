"""sdworker: a Stable Diffusion worker service with live previews over Server-Sent Events."""

__version__ = "0.1.0"
