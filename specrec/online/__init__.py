"""The online path: the thin scorer's training data and the HTTP scoring service."""
