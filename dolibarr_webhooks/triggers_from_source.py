"""Regenerate ``triggers.json``, the catalogue's list of Dolibarr trigger codes, from Dolibarr's
own source trees: one tree per release, so that a new release is an hour's work::

    python -m dolibarr_webhooks.triggers_from_source 20.0.4=~/src/dolibarr-20.0.4 \\
        21.0.4=~/src/dolibarr-21.0.4 22.0.4=~/src/dolibarr-22.0.4 23.0.3=~/src/dolibarr-23.0.3

What it reads in each tree:

- **fired**: every ``call_trigger('CODE'`` (or ``"CODE"``) in ``htdocs/**/*.php``, and the
  ``$triggerName = 'CODE'`` / ``$trigger_name = 'CODE'`` that some classes pass to it. The module
  is the folder under ``htdocs/`` of the file that calls it (``compta/facture`` gives
  ``facture``). Codes built at run time (``strtoupper($this->element).'_CREATE'``) cannot be
  read this way: ``KEPT_DYNAMIC`` lists those the catalogue keeps anyway.
- **offered**: the codes of the ``llx_c_action_trigger`` dictionary
  (``htdocs/install/mysql/data/llx_c_action_trigger.sql``), which Dolibarr's webhook target form
  offers. A code offered but never fired (``BILL_SUPPLIER_CANCELED`` in 22.0.4) is flagged.

Labels come from ``catalogue.FAMILIES`` and ``ACTIONS``: a code of a new family or action is
written out with ``"family": null`` and ``label`` falls back to the code until one is added.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Iterable

from .events import FAMILIES, split_code

OUTPUT = Path(__file__).with_name("triggers.json")

_CALL = re.compile(r"""call_trigger\(\s*['"]([A-Z][A-Z0-9_]+)['"]""")
_NAMED = re.compile(r"""\$trigger_?name\s*=\s*['"]([A-Z][A-Z0-9_]+)['"]""", re.IGNORECASE)
_OFFERED = re.compile(r"""^\s*insert\s+into\s+llx_c_action_trigger\s*\([^)]*\)\s*values\s*\(\s*'([A-Z0-9_]+)'\s*,"""
                      r"""\s*'(?:[^'\\]|\\.|'')*'\s*,\s*'(?:[^'\\]|\\.|'')*'\s*,\s*'([a-z_]*)'""",
                      re.IGNORECASE | re.MULTILINE)
# Folders under htdocs/ that hold several modules: the module is the next folder down.
_GROUPS = {"compta", "fourn", "core", "comm", "custom"}
# Built at run time by CommonObject for every class, so no literal names them; fired by them.
KEPT_DYNAMIC = ("TEST_TRIGGER_CODE",)


def module_of(path: Path, htdocs: Path) -> str:
    parts = path.relative_to(htdocs).parts[:-1]
    parts = [p for p in parts if p not in ("class", "lib", "core")] or ["core"]
    if parts[0] in _GROUPS and len(parts) > 1:
        return parts[1]
    return parts[0]


def read_tree(root: Path) -> tuple[dict[str, set[str]], dict[str, str]]:
    """``({code: modules that fire it}, {offered code: element type})`` of one Dolibarr tree."""
    htdocs = root / "htdocs"
    if not htdocs.is_dir():
        raise SystemExit(f"{root}: no htdocs/ folder, not a Dolibarr source tree")
    fired: dict[str, set[str]] = {}
    for php in sorted(htdocs.rglob("*.php")):
        if "/test/" in php.as_posix():
            continue
        source = php.read_text(errors="replace")
        for code in set(_CALL.findall(source)) | set(_NAMED.findall(source)):
            fired.setdefault(code, set()).add(module_of(php, htdocs))
    offered: dict[str, str] = {}
    dictionary = htdocs / "install" / "mysql" / "data" / "llx_c_action_trigger.sql"
    if dictionary.is_file():
        for line in dictionary.read_text(errors="replace").splitlines():
            if line.lstrip().startswith("--"):
                continue  # a commented-out insert offers nothing
            match = _OFFERED.match(line)
            if match:
                offered[match.group(1)] = match.group(2)
    return fired, offered


def build(trees: dict[str, Path]) -> dict:
    """The content of ``triggers.json`` for these ``{release: tree}``."""
    codes: dict[str, dict] = {}
    for release, root in trees.items():
        fired, offered = read_tree(root)
        for code in set(fired) | set(offered) | set(KEPT_DYNAMIC):
            split = split_code(code)
            entry = codes.setdefault(code, {
                "family": split[0] if split else None,
                "element": FAMILIES[split[0]][0] if split else offered.get(code, ""),
                "module": "", "fired": [], "offered": [], "provenance": "source",
            })
            if code in fired or code in KEPT_DYNAMIC:
                entry["fired"].append(release)
                entry["module"] = entry["module"] or ",".join(sorted(fired.get(code, ())))
            if code in offered:
                entry["offered"].append(release)
    return {"generated_from": sorted(trees), "codes": dict(sorted(codes.items()))}


def dumps(data: dict) -> str:
    """JSON with one line per code, so that a regeneration reads as a short diff."""
    lines = [f"  {json.dumps(code)}: {json.dumps(entry, ensure_ascii=False)}" for code, entry in data["codes"].items()]
    return (f'{{\n "generated_from": {json.dumps(data["generated_from"], ensure_ascii=False)},\n "codes": {{\n'
            + ",\n".join(lines) + "\n }\n}\n")


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    output = OUTPUT
    if args[:1] == ["--output"]:
        output, args = Path(args[1]), args[2:]
    if not args or any("=" not in a for a in args):
        print(__doc__, file=sys.stderr)
        return 2
    trees = {release: Path(path).expanduser() for release, path in (a.split("=", 1) for a in args)}
    data = build(trees)
    output.write_text(dumps(data))
    never = [c for c, e in data["codes"].items() if e["offered"] and not e["fired"]]
    print(f"{len(data['codes'])} codes from {', '.join(trees)} written to {output}; "
          f"offered but never fired: {', '.join(never) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
