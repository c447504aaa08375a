"""The pipeline's steps as plain functions over locations and configs: ingest, train,
encode (images, regions, the driver), publish, share (grant and reveal)."""
