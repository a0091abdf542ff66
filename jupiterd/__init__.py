"""jupiterd: keeps the Jupiter WebRTC/IoT stack reachable."""

__version__ = "0.1.0"
