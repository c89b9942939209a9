"""Deep links: every view of every tab as plain URL query parameters, and the command that reproduces it.

`codec` turns a `ViewState` into a query string and back (round-trip exact; invalid parameters are dropped with a
notice, never an error); `images` resolves the image references a link can carry (`example:N`,
`world:SEED:INDEX`); `commands` writes the `python -m core ...` lines that give a view's numbers.
A tab joins by one `register_tab(...)` line in `codec` and one command writer in `commands`.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "codec": ["ViewState", "LinkRead", "TabLinks", "TABS", "register_tab", "encode", "decode", "PARAMS", "BASES"],
    "images": ["ImageRef", "parse_image_ref", "image_from_ref", "image_ref_path", "describe_ref", "default_texts"],
    "commands": ["reproduce_commands", "CITATIONS"],
})
