"""A folder's vectors kept: FAISS index, SQLite rows, the index folder, incremental indexing, relocation, search.
Imports only siamsearch.core."""
