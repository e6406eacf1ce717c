"""The report: one self-contained HTML page rendered from a run directory (:mod:`.render`, :mod:`.figures`)."""
