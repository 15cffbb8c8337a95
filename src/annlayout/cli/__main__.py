"""``python -m annlayout.cli``: the same as the ``annlayout`` command."""

from annlayout.cli import run

if __name__ == "__main__":
    run()
