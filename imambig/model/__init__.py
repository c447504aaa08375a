"""The network: the sparse autoencoder, its layers, checkpoints and numeric precision."""
