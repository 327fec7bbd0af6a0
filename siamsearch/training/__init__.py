"""An encoder from a folder: the recipe, the data and its batches, the loop, the whitening, validation.
Imports only siamsearch.core."""
