"""The model libraries' own chatter, kept off the terminal of ``serve``, ``worker`` and ``generate``.

diffusers, transformers, huggingface_hub and gguf write advice meant for library users (``[transformers]
Model config: bos_token_id must be None...``, ``requires torchvision (not installed)``, deprecations),
progress bars (``Writing model shards: 100%|...`` while the demo bundle is built) and INFO lines
(``gguf.gguf_writer``) on stderr. Among a server's log lines they read like errors, and none of them is
one (issue #20). With ``--log-level debug`` everything is left as the libraries want it; real errors
(ERROR and above) always show, and so do sdworker's own lines.

Imported lazily by the commands that load models: the API node has no model libraries to quiet.
"""

from __future__ import annotations

import logging
import warnings

# Python warnings (FutureWarning, DeprecationWarning) raised from inside these packages.
_WARNING_SOURCES = r"(diffusers|transformers|huggingface_hub|gguf)(\.|$)"


def quiet_libraries(level: str = "INFO", *, download_bars: bool = False) -> None:
    """Library messages below ERROR and their progress bars off, unless ``level`` is DEBUG.

    ``download_bars``: keep huggingface_hub's download bars (``generate`` at a terminal: a hub model's
    first download takes minutes, and without them it looks like a hang)."""
    if level.upper() == "DEBUG":
        return
    logging.getLogger("gguf").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module=_WARNING_SOURCES)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=_WARNING_SOURCES)
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    hub_utils.logging.set_verbosity_error()
    if not download_bars:
        hub_utils.disable_progress_bars()
