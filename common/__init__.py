"""The shared ground floor of Quarry: what the offline indexer, the online retriever and the ranker all use.

Nothing here imports those layers (tests/unit/test_layers.py checks it), so any of them can build on it:

- `snapshot`   the indexer ↔ retriever contract: manifest, checksums, versioning
- `catalog`    the catalog format (items, behavior events) and its readers
- `index/`     index formats with their writers and readers: text (tantivy), forward store, geo,
               behavior tables, vectors (one module per backend)
- `encoders/`  text encoders shared by the build (item vectors) and serving (query vectors)
- `settings`   the one settings tree (schema and loader)
- `types`      value types that cross layers (Candidate, Fused, GeoPoint, UserCounters, ...)
- `geo`, `fsutil`  small shared helpers (haversine, atomic writes)
- `v1/`        generated gRPC/protobuf stubs of proto/quarry/v1 (never edited by hand)
"""
