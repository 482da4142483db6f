"""Data stages: ingest (load + validate/quarantine), prepare (id maps, sequences), split (clock)."""
