"""Preview decoders (latents -> small RGB pixels) and the per-request preview options.

This package's ``__init__`` and ``options`` import neither torch nor diffusers, so the HTTP layer may
validate preview options without pulling in the engine's dependencies. The decoders live in their own
modules and are imported by the engine only.
"""
