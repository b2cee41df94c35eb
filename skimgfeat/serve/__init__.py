"""``skimgfeat serve``: the archive in a browser (the ``serve`` extra: Starlette, uvicorn, Jinja2).

:func:`~skimgfeat.serve.source.open_source` opens an archive,
:class:`~skimgfeat.serve.app.ServeApp` holds what the pages share and
:func:`~skimgfeat.serve.app.create_app` makes the ASGI application; the command
``skimgfeat serve`` runs it with uvicorn. See docs/serve.md.
"""
