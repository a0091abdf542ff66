"""The one error a configuration can raise."""

from __future__ import annotations

# --------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """An invalid configuration. ``str()`` is the whole message for the user."""

    def __init__(self, path: str | None, key: str | None, message: str) -> None:
        # One line, bounded: a message never carries a whole value the file gave.
        if key is not None and len(key) > 200:
            key = key[:200] + "…"
        message = " ".join(message.split()) if "\n" in message else message
        if len(message) > 300:
            message = message[:300] + "…"
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: " if path else ""
        at = f"{key}: " if key else ""
        super().__init__(f"{where}{at}{message}")
