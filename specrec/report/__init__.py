"""`specrec report`: one HTML page with PNG figures built from the project's MLflow store, logged to MLflow.

`runs.py` reads an experiment's runs lined up by cycle (the `as_of` tag), `sections.py` turns each
per-cycle experiment into a figure and a table, `plots.py` draws, `page.py` writes the HTML, and
`build.py` puts it together and logs it to the MLflow experiment `report`.
"""
