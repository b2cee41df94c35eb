"""sphinx-gallery hooks of the skimgfeat site (named in ``conf.py``)."""

from __future__ import annotations


def run_with_file(gallery_conf: dict, script_vars: dict) -> list[str]:
    """``reset_argv`` hook: run each example with ``__file__`` set, as ``python example.py`` would.

    sphinx-gallery leaves ``__file__`` undefined in examples; ours find the shared data
    relative to it. This hook runs after the example's globals are made and before its
    first block, so it sets the name there and passes no command-line arguments.
    """
    script_vars["example_globals"]["__file__"] = str(script_vars["src_file"])
    return []
