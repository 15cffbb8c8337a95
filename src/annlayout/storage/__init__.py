"""Stores by location (local, s3://, h5ad, zarr), remote clients, byte-range reads, the commit."""
