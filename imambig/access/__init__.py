"""Who may read what: the owner's secrets, encryption, the keystore, user identities
and sealed grants."""
