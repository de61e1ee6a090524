"""The generation engine: the ``Engine`` protocol, the diffusers engine and a fake for API tests.

Import the diffusers engine from ``sdworker.engine.diffusers_engine``; this package's ``__init__``,
``protocol`` and ``fake`` stay free of torch so the job layer can depend on the protocol alone.
"""
