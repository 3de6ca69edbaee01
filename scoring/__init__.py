"""Batch scoring: the whole customer table scored on Dask with the served bundle, out of core.

``python -m scoring --data SOURCE --out DEST`` reads the table in partitions, scores each on a Dask
worker with the service's own predictor and writes one output file (or one transaction) per
partition, so a rerun skips what is already written.
"""
