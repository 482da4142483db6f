"""Thin Prefect flows, one file each; their tasks call into specrec/ and models/ (issues 4-9)."""
