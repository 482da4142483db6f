"""The canonical interaction and item schemas every loader produces and every stage consumes.

Interactions: one row per event.
  user_id   int64               the source's user id
  item_id   int64               the source's item id
  timestamp datetime64[ns, UTC] when the event happened
  rating    float64 (optional)  explicit rating, NaN when the source has none
  weight    float64 (optional)  event weight (e.g. dwell, purchase=2), NaN when absent

Items: one row per item.
  item_id int64
  title   string  ("" when unknown)
  genres  string  pipe-separated, e.g. "Adventure|Comedy" ("" when unknown)
  tags    string  pipe-separated free-text tags ("" when unknown)
"""

from __future__ import annotations

import pandas as pd

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "weight")
REQUIRED_INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "genres", "tags")
ITEM_TEXT_COLUMNS = ("title", "genres", "tags")
QUARANTINE_REASON = "reason"
SOURCE_ROW = "source_row"


def empty_items() -> pd.DataFrame:
    """An item table with no rows and the canonical dtypes."""
    return pd.DataFrame(
        {"item_id": pd.Series(dtype="int64"), **{c: pd.Series(dtype="string") for c in ITEM_TEXT_COLUMNS}}
    )


def item_text(items: pd.DataFrame) -> pd.Series:
    """One text per item from its title, genres and tags (input to the content embedding)."""
    genres = items["genres"].str.replace("|", ", ", regex=False)
    tags = items["tags"].str.replace("|", ", ", regex=False)
    return (items["title"] + ". " + genres + ". " + tags).str.strip(" .")
