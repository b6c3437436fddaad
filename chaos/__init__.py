"""The chaos suite: ``python -m chaos`` (see ``chaos/__main__.py`` and docs/chaos.md).

Not part of the test run (pytest collects ``tests/`` only). ``chaos`` is also the Django app of
``chaos.settings``, so its ``jobs`` module is autodiscovered by the workers.
"""
