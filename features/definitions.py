"""Feast definitions of specrec: entities, sources, feature views and the scorer's feature service.

Keys: `item` (item_id) and `user` (user_id) as in DESIGN.md, plus `bundle` (bundle_id) on every view
whose values come from a model. A model-derived row is keyed by (entity, bundle), so a new bundle is
written next to the serving one (blue/green) and a reader that asks for the serving bundle can never
get a row of another. `item_stats` is model-free and keyed by item alone.

The offline store holds the history of every written row as parquet under data/feast/offline/<view>/;
push sources let the nearline flows write fresh rows online and offline.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, UnixTimestamp

item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A catalogue item.")
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A user.")
bundle = Entity(
    name="bundle",
    join_keys=["bundle_id"],
    value_type=ValueType.STRING,
    description="A serving bundle: the model generation (FM, adapter, codebook, scorer) a row came from.",
)


def _source(view: str) -> PushSource:
    """A push source over the view's parquet history."""
    batch = FileSource(
        name=f"{view}_history",
        path=f"../data/feast/offline/{view}",
        timestamp_field="event_timestamp",
    )
    return PushSource(name=f"{view}_push", batch_source=batch)


item_repr = FeatureView(
    name="item_repr",
    entities=[item, bundle],
    ttl=timedelta(0),  # never expires: the bundle, not the clock, says whether a row is current
    schema=[
        Field(name="embedding", dtype=Array(Float32), description="FM output item embedding (ANN index)."),
        Field(
            name="semantic_id",
            dtype=Array(Int64),
            description="Semantic ID from the bundle's RQ-VAE codebook: L codes + a collision index; "
            "empty when the bundle has no codebook or the item no ID yet.",
        ),
        Field(name="item_idx", dtype=Int64, description="The model's contiguous item index."),
    ],
    source=_source("item_repr"),
    online=True,
    tags={"owner": "nearline", "written_by": "materialize_item_embeddings"},
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=timedelta(days=400),
    schema=[
        Field(name="count_1c", dtype=Int64, description="Events in the last cycle."),
        Field(name="count_7c", dtype=Int64, description="Events in the last 7 cycles."),
        Field(name="trend", dtype=Float32, description="count_1c / (count_7c / 7): above 1 = rising."),
        Field(
            name="mean_rating",
            dtype=Float32,
            description="Mean rating of all events known so far (NaN: none).",
        ),
        Field(name="last_event_ts", dtype=UnixTimestamp, description="Time of the item's newest event."),
    ],
    source=_source("item_stats"),
    online=True,
    tags={"owner": "nearline", "written_by": "update_item_stats"},
)

user_state = FeatureView(
    name="user_state",
    entities=[user, bundle],
    ttl=timedelta(0),
    schema=[
        Field(name="recent_items", dtype=Array(Int64), description="Newest item_ids first."),
        Field(name="state", dtype=Array(Float32), description="FM user state (retrieval query)."),
        Field(name="last_event_ts", dtype=UnixTimestamp, description="Time of the user's newest event."),
        Field(name="n_events", dtype=Int64, description="Events known for the user."),
    ],
    source=_source("user_state"),
    online=True,
    tags={"owner": "nearline", "written_by": "update_user_state"},
)

speculative = FeatureView(
    name="speculative",
    entities=[user, bundle],
    ttl=timedelta(days=2),  # at least speculation.ttl (checked by the precompute)
    schema=[
        Field(
            name="item_ids",
            dtype=Array(Int64),
            description="Items whose FM pair representation was precomputed.",
        ),
        Field(
            name="pair_repr",
            dtype=Array(Float32),
            description="Row-major (len(item_ids), D) FM pair vectors.",
        ),
        Field(name="pair_score", dtype=Array(Float32), description="FM pair score per item."),
        Field(name="expires_at", dtype=UnixTimestamp, description="Rows are misses after this time."),
    ],
    source=_source("speculative"),
    online=True,
    tags={"owner": "nearline", "written_by": "speculative_precompute"},
)

scorer_v1 = FeatureService(
    name="scorer_v1",
    features=[item_repr, item_stats, user_state, speculative],
    description="Everything the online scorer reads, for one bundle.",
)
