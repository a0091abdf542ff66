"""Files jupiterd keeps in its state_dir: the guarded reader and writer, and
the failover journal."""
