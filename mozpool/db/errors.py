"""Exceptions the database layer raises, whatever the back-end."""


class DatabaseError(Exception):
    """Base class for failures reported by mozpool.db."""


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached, or did not answer within the bound (HTTP 503)."""


class Conflict(DatabaseError):
    """A unique index or foreign key refused a write: someone else got there first."""


class SchemaError(DatabaseError):
    """The schema is missing, too new, or an upgrade step is missing."""
