"""Developer tools that are not part of the installed packages (``python tools/fuzz.py``)."""
