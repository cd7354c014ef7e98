"""Splitting a reply that is longer than WhatsApp takes, on sentence boundaries."""

import re

# WhatsApp's limit for one text message (and settings.WHATSAPP["MAX_TEXT_LENGTH"]).
WHATSAPP_MAX = 4096
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+|\n{2,}")


def split_reply(text, limit=WHATSAPP_MAX):
    """Parts of at most `limit` characters, cut after a sentence (or a paragraph);
    a single sentence longer than `limit` is cut at a space, then hard."""
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    parts, current = [], ""
    for sentence in _pieces(text, limit):
        joined = f"{current} {sentence}" if current else sentence
        if len(joined) <= limit:
            current = joined
        else:
            parts.append(current)
            current = sentence
    if current:
        parts.append(current)
    return parts


def _pieces(text, limit):
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        while len(sentence) > limit:
            cut = sentence.rfind(" ", 0, limit + 1)
            cut = cut if cut > limit // 2 else limit
            yield sentence[:cut].strip()
            sentence = sentence[cut:].strip()
        if sentence:
            yield sentence
