"""The log's one filter: no secret reaches stderr. Settings load it before Django is set up, so
nothing here imports Django."""
import logging
import re

MASK = "[scrubbed]"
# What a secret looks like wherever it ends up in a message or a traceback: an Authorization
# header's credentials, a Hugging Face token (hf_...), one of our API tokens (mist_..., knox), and the
# value given for a huggingface_token field (a dict's repr, JSON, a form, a keyword argument).
_PATTERNS = [
    (re.compile(r"\b(Authorization['\"]?\s*[:=]\s*['\"]?(?:Token|Bearer|Basic)\s+)[^\s'\",;}]+", re.IGNORECASE), r"\1" + MASK),
    (re.compile(r"\b((?:Token|Bearer)\s+)(?:mist_|hf_)[A-Za-z0-9_\-]+"), r"\1" + MASK),
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), MASK),
    (re.compile(r"\bmist_[A-Za-z0-9]{20,}"), MASK),
    (re.compile(r"(huggingface_token['\"]?\s*[:=]\s*['\"]?)[^\s'\"&,;)}]+", re.IGNORECASE), r"\1" + MASK),
]


def scrub(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class ScrubSecrets(logging.Filter):
    """Rewrites a record's message and traceback with every secret masked, before any handler
    formats it. Attached to the handlers, so whichever logger the record came from is covered."""

    def filter(self, record):
        message = record.getMessage()
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True
