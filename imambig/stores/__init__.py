"""Where bytes live: locations (URL + storage options), the image store, the public
store, the encode lease, and mini-batches read from the image store."""
