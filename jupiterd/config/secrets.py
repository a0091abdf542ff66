"""Secrets given as ``{env: NAME}`` or ``{file: PATH}``, read without ever
quoting what was given."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import SecretStr

from jupiterd.config.errors import ConfigError
from jupiterd.config.reader import MAX_SECRET_BYTES, FileTooLarge, read_bounded
from probes.options import ProbeOptions

# --------------------------------------------------------------------------- loading

SecretSource = Literal["env", "file"]


def _is_secret_field(opts: type[ProbeOptions], key: str) -> bool:
    field = opts.model_fields.get(key)
    if field is None:
        return False
    ann = field.annotation
    return ann is SecretStr or SecretStr in getattr(ann, "__args__", ())


# What a secret reference becomes when secrets are not needed (pause, resume,
# status, iam-policy): those commands must work where the secrets are absent.
UNRESOLVED_SECRET = "<secret not loaded>"


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


def _resolve_secret(value: Any, key: str, resolve: bool = True) -> Any:
    """``{env: NAME}`` or ``{file: PATH}`` -> the secret's text.

    No message quotes what was given: an operator may have pasted the secret
    itself where the variable's name or the file's path belongs."""
    if not isinstance(value, Mapping):
        return value
    if set(value) == {"env"}:
        name = value["env"]
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ConfigError(
                None,
                f"{key}.env",
                "expected the name of an environment variable "
                "(letters, digits and '_'); the secret itself does not go here",
            )
        if not resolve:
            return UNRESOLVED_SECRET
        if name not in os.environ:
            raise ConfigError(None, f"{key}.env", "the environment variable named here is not set")
        return os.environ[name]
    if set(value) == {"file"}:
        path = value["file"]
        if not isinstance(path, str) or not path or "\0" in path:
            raise ConfigError(None, f"{key}.file", "expected the path of a file holding the secret")
        if not resolve:
            return UNRESOLVED_SECRET
        try:
            data = read_bounded(path, MAX_SECRET_BYTES)
        except FileTooLarge:
            raise ConfigError(
                None,
                f"{key}.file",
                f"the file named here is over {MAX_SECRET_BYTES // 1024} KiB: not a secret",
            ) from None
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise ConfigError(
                None, f"{key}.file", f"cannot read the file named here: {why}"
            ) from None
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(
                None, f"{key}.file", "the file named here is not UTF-8 text"
            ) from None
    raise ConfigError(None, key, "a secret is a string, {env: NAME} or {file: PATH}")
