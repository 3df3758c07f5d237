"""`python -m models [--list-encoders] [--list-streams] [--list-presets [NAME]]`: the registered
names, space-separated, one line per list asked for (in that order). The shell scripts read
their name lists from here (scripts/_common.sh)."""
from __future__ import annotations

import argparse

from feeders.streams import STREAMS
from models import list_encoders, list_presets


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models",
                                     description="Print the registered names.")
    parser.add_argument("--list-encoders", action="store_true", help="registered encoder names")
    parser.add_argument("--list-streams", action="store_true", help="input stream names")
    parser.add_argument("--list-presets", nargs="?", const="", default=None, metavar="NAME",
                        help="preset names of encoder NAME (without NAME: of all encoders)")
    args = parser.parse_args(argv)
    if not (args.list_encoders or args.list_streams or args.list_presets is not None):
        parser.error("nothing to list: give --list-encoders, --list-streams or --list-presets")
    lines = []
    if args.list_encoders:
        lines.append(list_encoders())
    if args.list_streams:
        lines.append(list(STREAMS))
    if args.list_presets is not None:
        try:
            lines.append(list_presets(args.list_presets or None))
        except ValueError as err:
            parser.error(str(err))
    for names in lines:
        print(" ".join(names))


if __name__ == "__main__":
    main()
