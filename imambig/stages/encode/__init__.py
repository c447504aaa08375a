"""The encode step: images -> public store + keystore, around one settled plan
(``plan``). ``driver.run_encode`` takes the lease, prepares the stores (``regions``),
maps regions onto workers (``dask_regions``: a closed ``dask_cluster``; each worker
encodes with ``images`` under the keys of ``region_keys``), and finishes; ``noise_fit``
and ``release_binding`` hold the owner's mechanism to what was published before."""
