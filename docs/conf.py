"""Sphinx configuration of the skimgfeat site (``make docs``; warnings are errors).

Generated at build time, never committed (see ``.gitignore``):

* ``generated/api.rst``: one entry per name in ``skimgfeat.__all__``; the build fails when
  a public class or function has no docstring of its own;
* ``generated/cli.rst``: the ``--help`` text of every ``skimgfeat`` subcommand, read from
  the CLI's own argparse parser;
* ``auto_examples/``: the gallery, from running ``examples/plot_*.py``
  (``SKIMGFEAT_EXAMPLE_SUBSET=1`` for the quick subset).

Intersphinx links to scikit-learn, NumPy, pandas and PyTorch need their sites: they are
enabled only when those are reachable (or ``SKIMGFEAT_DOCS_INTERSPHINX=1`` forces them,
``=0`` disables them), so an offline build stays warning-free.
"""

from __future__ import annotations

import argparse
import inspect
import os
import socket
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "generated"
sys.path[:0] = [str(ROOT), str(DOCS)]

import skimgfeat  # noqa: E402
import skimgfeat.archive  # noqa: E402
from skimgfeat.cli import build_parser  # noqa: E402

project = "skimgfeat"
author = "skimgfeat developers"
copyright = "skimgfeat developers"
release = version = skimgfeat.__version__

root_doc = "contents"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # included pages (benchmarks/README.md) start below level 1 by design

templates_path = ["_templates"]
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

html_theme = "pydata_sphinx_theme"
html_title = f"skimgfeat {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "logo": {"text": "skimgfeat"},
    "header_links_before_dropdown": 7,
}
html_static_path: list[str] = []

# -- the example gallery ---------------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": str(DOCS / "auto_examples"),
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "remove_config_comments": True,
    "download_all_examples": False,
    "abort_on_example_error": True,
    "image_scrapers": ("matplotlib",),
    "reset_argv": "gallery_hooks.run_with_file",
    "doc_module": ("skimgfeat",),
    "backreferences_dir": str(GENERATED / "backreferences"),
    "reference_url": {"skimgfeat": None},
}
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("SKIMGFEAT_SHARED", str(ROOT.parent / "shared"))
if not Path(os.environ["SKIMGFEAT_SHARED"]).exists():
    # the examples read the shared photos and weights: without them the gallery shows their code only
    print(f"skimgfeat docs: {os.environ['SKIMGFEAT_SHARED']} is absent, the examples are not run")
    plot_gallery = "False"

# -- intersphinx, only when the sites answer ------------------------------------------------

INTERSPHINX_SITES = {
    "python": "https://docs.python.org/3",
    "sklearn": "https://scikit-learn.org/stable",
    "numpy": "https://numpy.org/doc/stable",
    "pandas": "https://pandas.pydata.org/docs",
    "torch": "https://docs.pytorch.org/docs/stable",
}


def _reachable(host: str, timeout: float = 1.5) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _intersphinx_wanted() -> bool:
    forced = os.environ.get("SKIMGFEAT_DOCS_INTERSPHINX")
    if forced in ("0", "1"):
        return forced == "1"
    return all(_reachable(url.split("/")[2]) for url in INTERSPHINX_SITES.values())


intersphinx_mapping = {name: (url, None) for name, url in INTERSPHINX_SITES.items()} if _intersphinx_wanted() else {}

# -- generated pages: API reference and CLI reference -----------------------------------------


def public_names() -> list[str]:
    """``skimgfeat.__all__`` without dunders (``__version__`` is shown in the title)."""
    return [name for name in skimgfeat.__all__ if not name.startswith("__")]


def undocumented(names: list[str]) -> list[str]:
    """Public classes and functions without a docstring of their own, data without a ``#:`` comment."""
    from sphinx.pycode import ModuleAnalyzer

    missing = []
    for name in names:
        value = getattr(skimgfeat, name)
        if inspect.isclass(value) or callable(value):
            if not (value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__):
                missing.append(name)
        elif not any(
            ("", name) in ModuleAnalyzer.for_module(module).find_attr_docs()
            for module in _defining_modules(name)
        ):
            missing.append(name)
    return missing


def _defining_modules(name: str) -> list[str]:
    return [
        module_name
        for module_name, module in sys.modules.items()
        if module_name.startswith("skimgfeat.") and name in vars(module) and module is not skimgfeat
    ]


# Subpackages whose names are not re-exported by ``skimgfeat`` (they import more than the
# feature extraction needs): each gets a section of its own on the API page.
SUBPACKAGE_SECTIONS = (
    ("The archive", "skimgfeat.archive", skimgfeat.archive.__all__),
    ("Scale-out", "skimgfeat.distributed", ["embed_partitions"]),
)


def write_api_page() -> None:
    names = public_names()
    missing = undocumented(names)
    if missing:
        raise RuntimeError(f"public names without a docstring (add one before building the docs): {missing}")
    classes = [name for name in names if inspect.isclass(getattr(skimgfeat, name))]
    functions = [name for name in names if name not in classes and callable(getattr(skimgfeat, name))]
    data = [name for name in names if name not in classes and name not in functions]
    lines = [
        "API reference",
        "=============",
        "",
        "Every name ``from skimgfeat import ...`` offers (``skimgfeat.__all__``).",
        "",
        ".. currentmodule:: skimgfeat",
        "",
    ]
    for title, entries in (("Estimators and classes", classes), ("Functions", functions)):
        if entries:
            lines += [title, "-" * len(title), "", ".. autosummary::", "   :toctree: api", ""]
            lines += [f"   {name}" for name in entries] + [""]
    if data:
        lines += ["Data", "----", ""]
        lines += [f".. autodata:: {name}\n   :no-value:\n" for name in data]
    for title, module_name, entries in SUBPACKAGE_SECTIONS:
        lines += [title, "-" * len(title), "", f".. currentmodule:: {module_name}", "",
                  ".. autosummary::", "   :toctree: api", ""]
        lines += [f"   {name}" for name in entries] + [""]
    _write_if_changed(GENERATED / "api.rst", "\n".join(lines))


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser by name, nested ones (``index build``) after their parent."""
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    found = {}
    for name, sub in (actions[0].choices.items() if actions else ()):
        found[name] = sub
        found.update({f"{name} {inner}": nested for inner, nested in subcommand_parsers(sub).items()})
    return found


def write_cli_page() -> None:
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal width: fix it for the page
    parser = build_parser()
    parser.prog = "skimgfeat"
    lines = [
        "Command-line reference",
        "======================",
        "",
        "The ``--help`` of ``skimgfeat`` and each of its commands, as the installed version prints it.",
        "The guide to the command line, its outputs and exit codes is :doc:`../cli`.",
        "",
    ]
    sections = {"skimgfeat": parser, **{f"skimgfeat {name}": sub for name, sub in subcommand_parsers(parser).items()}}
    for title, command in sections.items():
        lines += [f"``{title}``", "-" * (len(title) + 4), "", ".. code-block:: text", ""]
        lines += [f"   {line}".rstrip() for line in command.format_help().splitlines()] + [""]
    _write_if_changed(GENERATED / "cli.rst", "\n".join(lines))


def user_guide_pages() -> list[str]:
    """The guide's Markdown pages: a preferred order first, then any other page in ``docs/``."""
    preferred = ["index", "models", "tabular", "similarity", "millions-of-photos", "object-matching", "quality",
                 "fine-tuning", "cli", "original-module"]
    preferred += ["performance", "architecture"]
    elsewhere = {"changelog", "benchmarks"}
    present = {path.stem for path in DOCS.glob("*.md")}
    return [name for name in preferred if name in present] + sorted(present - set(preferred) - elsewhere)


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _insert_user_guide(app, docname: str, source: list[str]) -> None:
    if docname == "user-guide":
        source[0] = source[0].replace("USER-GUIDE-PAGES", "\n   ".join(user_guide_pages()))


write_api_page()
write_cli_page()


def _skip_metadata_request_setters(app, what, name, obj, skip, options):
    """Leave out scikit-learn's generated ``set_fit_request`` & co.

    Their docstrings point into scikit-learn's own glossary and user guide, which an
    offline build cannot resolve; scikit-learn documents them (metadata routing).
    """
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app) -> None:
    app.connect("source-read", _insert_user_guide)
    app.connect("autodoc-skip-member", _skip_metadata_request_setters)
