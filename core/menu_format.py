"""The length menu's file: its name, format and version, and the speedup bases it may record.

``<model>/length_configs.json`` is written by the search (``search.menu``) and read by the
serving side (``serving.menu``); both take the format from here. The format is in docs/search.md
("The length menu").
"""
MENU_FILE = "length_configs.json"
FORMAT = "dynamic-tinybert-length-menu"
VERSION = 1
SPEEDUP_BASES = ("measured", "macs_ratio")
SPEEDUP_DEFINITIONS = {
    "measured": "full-length forward seconds / this configuration's forward seconds, measured by the "
                "search on the same sorted, longest-padded batches",
    "macs_ratio": "MACs of the full-length model / MACs of this configuration (the search timed padded "
                  "batches, which are not what inference runs)",
}
TOLERANCE = 1e-9  # budgets are compared with this slack (a speedup written as 2.0 meets --speedup 2)
