"""imambig: privacy-preserving image sharing via ambiguated sparse codes.

The library, lowest layer first (a package imports only from the ones before it):
``errors`` (the exceptions for bad input), ``config`` (every setting and default),
``stores`` (locations and stores), ``model`` (the network), ``access`` (secrets,
keystore, grants), ``mechanism`` (records, ambiguation, keys), ``evaluation``
(measures), ``attacks``, ``stages`` (the pipeline's steps), ``study`` (what a public
record reveals) and ``cli``. Orchestration (Prefect flows, the demo) lives outside, in
``flows``.
"""

__version__ = "0.1.0"
