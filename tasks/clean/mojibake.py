"""Unicode repair: mojibake (UTF-8 read as Latin-1, Windows-1252 or -1251) and control characters.

ftfy does the repair; it is slow, so a cheap pattern decides first whether a text could need it.
"""

from __future__ import annotations

import re

import ftfy

# ftfy without the steps that would change correct text: entities are decoded
# once by the HTML parser, and curly quotes and full-width forms are content.
_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False, uncurl_quotes=False, fix_character_width=False, explain=False
)


def _mojibake_hint() -> re.Pattern[str]:
    """Pattern for text that ftfy might change; ftfy is slow, so other text skips it.

    Mojibake from UTF-8 read as Latin-1, Windows-1252 or Windows-1251 puts a
    lead-byte character right before a continuation-byte character; ftfy also
    fixes C1 controls, ligatures, terminal escapes and surrogates.
    """
    continuation = bytes(range(0x80, 0xA0)) + bytes(range(0xA1, 0xC0))
    latin = continuation.decode("latin-1") + continuation.decode("cp1252", "ignore") + "\ufffd"
    cyrillic = continuation.decode("cp1251", "ignore")
    return re.compile(
        f"[\u00c2-\u00f4][{re.escape(latin)}]|[\u00c2\u00c3][ \u00a0]"
        f"|[\u0420\u0421][{re.escape(cyrillic)}]|[\u0080-\u009f\u001b\ufb00-\ufb06\ud800-\udfff]"
    )


_MOJIBAKE_HINT = _mojibake_hint()
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")
# Any text that needs repair has one of these: a control character or the first
# character of a _MOJIBAKE_HINT match. Most text has none, and skips repair.
_REPAIR_CANDIDATE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\u00c2-\u00f4\u0420\u0421\ufb00-\ufb06\ud800-\udfff]")


def repair_unicode(text: str) -> str:
    """Text with its mojibake fixed (ftfy) and control characters other than whitespace removed."""
    if _REPAIR_CANDIDATE.search(text):
        if _MOJIBAKE_HINT.search(text):
            text = ftfy.fix_text(text, _FTFY_CONFIG)
        text = _CONTROL_CHARS.sub("", text)
    return text
