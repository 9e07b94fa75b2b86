"""The Zarr v3 dataset: layout, writer, index, loader."""
