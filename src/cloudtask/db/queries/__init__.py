"""SQL, one module per table, shared by every service. Functions take an open connection; the caller
owns the transaction."""
