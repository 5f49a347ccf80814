"""The token the CLI sends: $VITQ_TOKEN, else the one `vitq login` saved in the user's config directory
($XDG_CONFIG_HOME/vitq/token, default ~/.config/vitq/token), a file only its owner can read (0600)."""

from __future__ import annotations

import os
from pathlib import Path


def token_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "vitq" / "token"


def saved_token() -> str | None:
    env = os.environ.get("VITQ_TOKEN")
    if env:
        return env.strip()
    try:
        return token_file().read_text().strip() or None
    except FileNotFoundError:
        return None


def save_token(token: str) -> Path:
    """Write the token with 0600 from the first byte (created so, never chmod-ed after: no window)."""
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(path.name + ".part")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    partial.replace(path)
    return path
