"""Nearline work: the Feast store, serving bundles, and materialization of model representations."""
