"""Prefect wiring of imambig: flows and tasks that call the library, nothing more.

Importing this package lets secret specs ``prefect:BLOCK`` resolve through Prefect
Secret blocks, in the flow's process; the owner's secrets never travel as flow or task
parameters (an encode's region tasks carry only keys derived from them).
"""

from imambig.access.secrets import register_secret_scheme


def _prefect_secret(name: str) -> str:
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


register_secret_scheme("prefect", _prefect_secret)
