"""The scoring domain: loading a verified bundle and turning customer records into explained predictions.

Nothing here knows about HTTP; :mod:`app.api` calls it and :mod:`app.monitoring` observes what it returns.
"""
