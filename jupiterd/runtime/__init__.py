"""The running daemon: supervisor, probe loops, watches and heartbeats, the
HTTP API, drills, sd_notify and the process lifecycle."""
