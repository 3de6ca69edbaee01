"""The model bundle contract, shared by ``training`` (which publishes bundles) and ``app`` (which serves them).

:mod:`bundle.features` is the feature schema (fitting, persistence and the entry points to cleaning and
encoding), :mod:`bundle.rules` the cleaning rules of one value, :mod:`bundle.records` the record cleaner
(records by column with field-level errors), :mod:`bundle.encoding` the encoder, :mod:`bundle.manifest`
what a bundle declares, :mod:`bundle.store` how bundles are published and verified on disk,
:mod:`bundle.scoring` how a loaded artifact turns an encoded matrix into churn probabilities, and
:mod:`bundle.drift_reference` the frozen reference histograms. :mod:`bundle.registry` keeps the
stages of the bundles in a model directory (champion, challenger, archived), changed through
:mod:`bundle.stage_journal` and recorded in :mod:`bundle.history`. Published bundles themselves live
in a model directory (``models/`` by default), never in this package.
"""
