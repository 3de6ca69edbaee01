"""The offline training pipeline: ``python -m training`` turns a customer table into a verified model bundle."""
