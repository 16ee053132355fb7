"""Text from the server as the terminal client prints it: shown, never obeyed, never markup.

What a terminal would obey (escape sequences, control characters, bidi overrides) is made
visible by ``common.terminaltext.visible``, which ``jobrunner events`` uses too. rich reads
``[red]`` in a string as markup and ``[/data/out]`` as a closing tag that closes nothing (a
``MarkupError``): what the server sends (lines, results, error messages, progress phases) is
never markup either.
"""

from __future__ import annotations

from rich.text import Text

from jobrunner.common.terminaltext import visible


def plain(text: object, style: str = "") -> Text:
    """Server text as a rich ``Text`` in ``style``: shown, never read as markup."""
    return Text(visible(str(text)), style=style)
