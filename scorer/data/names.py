"""Column names given in one option (`--keep-columns id,day`): read from it, and written as it reads them."""

from __future__ import annotations

import re

from scorer.errors import ConfigError

# A name in double quotes (a quote inside it doubled), or one without quotes up to the next comma; spaces around it
# and the comma after it.
_NAME = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^,"]*?))\s*(,|$)')


def parse_names(text: str, option: str) -> tuple[str, ...]:
    """The names in `text`, separated by commas, each without the spaces around it; a name in double quotes is
    taken as written (one holding a comma, or spaces at its ends: `id,"a, b"," pad "`). '' names none."""
    if not text:
        return ()
    names, at = [], 0
    while True:
        found = _NAME.match(text, at)
        if found is None:
            raise ConfigError(f"{option} {text!r}: from character {at + 1} on, a quote is not closed or a name is "
                              "only partly quoted; write a name holding a comma, a double quote or spaces at its ends "
                              'whole in double quotes ("a,b"), a quote inside it doubled ("say ""hi""")')
        quoted, plain, separator = found.groups()
        names.append(quoted.replace('""', '"') if quoted is not None else plain)
        if not separator:
            return tuple(names)
        at = found.end()


def as_listed(name: str) -> str:
    """`name` as parse_names reads it back: in double quotes where it holds a comma or a quote, or starts or ends
    with a space."""
    if name and name == name.strip() and "," not in name and '"' not in name:
        return name
    return '"' + name.replace('"', '""') + '"'
