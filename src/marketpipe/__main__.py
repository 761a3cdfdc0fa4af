"""``python -m marketpipe`` and the console script, in a module that imports nothing heavy: a
Ctrl-C while the CLI's libraries load (a second or more on a busy machine) ends as the
interrupt it is, exit 130 and one line, never a traceback."""

import sys


def main() -> None:
    try:
        from marketpipe.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: nothing was started\n")
        raise SystemExit(130) from None
    run()


if __name__ == "__main__":
    main()
