"""LDAP: the directory client (ldap3, blocking, in a thread pool of its own)."""
