"""The bundle contract shared by ``training`` (which writes bundles) and ``app`` (which serves them).

Published bundles live beside this package, one directory per version, with ``current`` naming
the one to serve. See :mod:`models.bundle` for the layout and :mod:`models.features` for the
feature schema.
"""
