"""Request bodies as Dolibarr 20 to 22 sends them (invented data, real names, types and
PHP escaping), for ``webhooks send``, the tests, and plugin authors' tests."""

from __future__ import annotations

from importlib import resources


def sample_codes() -> list[str]:
    """Trigger codes that have a sample body."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def sample_body(code: str) -> bytes:
    """The raw body Dolibarr would post for ``code``, byte for byte."""
    path = resources.files(__name__) / f"{code.upper()}.json"
    if not path.is_file():
        raise KeyError(f"no sample for {code}; samples exist for: {', '.join(sample_codes())}")
    return path.read_bytes()
