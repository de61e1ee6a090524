"""Images in and out: decoding client images with limits (``decode``), encoding PNG/JPEG/WebP
(``encode``), and A1111-style ``parameters`` PNG metadata (``metadata``). Pillow and numpy only."""
