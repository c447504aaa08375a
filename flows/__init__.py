"""Prefect wiring of imambig: flows and tasks that call the library, nothing more.

Importing this package lets secret specs ``prefect:BLOCK`` resolve through Prefect
Secret blocks, inside whichever process (a Dask worker too) needs the secret; secrets
never travel as flow or task parameters.
"""

from imambig.access.secrets import register_secret_scheme


def _prefect_secret(name: str) -> str:
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


register_secret_scheme("prefect", _prefect_secret)
