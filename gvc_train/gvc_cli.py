"""The ``gvc`` console script: inference commands (``gvc_train.codecs.cli``) plus ``gvc eval``
(``gvc_train.eval.cli``). It sits above both so that ``codecs/`` never imports ``eval/``.
Standard library only at import: ``gvc --help`` answers at once.
"""

from __future__ import annotations

import sys

from gvc_train.codecs import cli as codec_cli
from gvc_train.eval.cli import add_eval_command


def main(argv: list[str] | None = None) -> int:
    return codec_cli.main(argv, extra_commands=[add_eval_command])


if __name__ == "__main__":
    sys.exit(main())
