"""siamsearch beyond one machine: the same stages on Ray (embed, index build + on-disk merge, dedup by cells).

Optional: `pip install 'siamsearch[cluster]'` brings Ray (with Ray Data) and pyarrow. Nothing here is
imported by the single-machine modules, and importing this package imports neither Ray nor pyarrow.
Stages hand each other immutable Parquet shards listed in a manifest (siamsearch.cluster.shards).
"""
