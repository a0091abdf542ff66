"""The stand-in services the sandbox runs, one process each (and the test
suite runs too): a python-socketio signaling server, coturn's
``turnserver`` under a script (or a small STUN/TURN responder), frps and
ThingsBoard stand-ins, and moto in server mode for AWS. Each is a script
that prints ``ready host:port`` once it listens (``process.Peer`` waits for
that line)."""
