"""Duplicates from the stored vectors: close pairs, groups and their kept files, moves and undo.
Imports siamsearch.index and siamsearch.core."""
