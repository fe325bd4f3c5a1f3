"""Every SMTP reply agentmx gives, in one table: the reply code, the enhanced status code (RFC
3463; none on the replies aiosmtpd words without one) and the text, with {placeholders}. The milter
and the LMTP server take their answers from here and spell none themselves
(tests/core/test_smtpreplies.py checks the source tree for a reply written anywhere else).

    reply.args(**values) -> (code, xcode, text)    for the milter's setreply()
    reply.line(**values) -> "451 4.3.0 text"       for an SMTP/LMTP answer (aiosmtpd's push);
    reply.line(more=True) -> "250-text"            a line of a multiline answer before its last

A value put into a text (a recipient, a domain, a reason) comes from outside: every character
that is not printable ASCII becomes "?" and the line is cut to fit RFC 5321's 512 octets
(4.5.3.1.5, with its CRLF). The milter never answers 5xx because of its own bug, and deliver's
LMTP answers a message with 250 or 451 only: the 5xx below are policy the operator asked for
(milter/policy.py), a block an agent or the operator set, and aiosmtpd's protocol answers for a
transaction it cannot take (the message is then still in Postfix's queue).

A plain class, not a dataclass: the LMTP server and the milter import this once per process,
and deliver's pipe process not at all (deliver/frontend.py).
"""
from __future__ import annotations

MAX_LINE = 510          # octets of a reply line without its CRLF (RFC 5321 4.5.3.1.5)


class Reply:
    __slots__ = ("code", "xcode", "text")

    def __init__(self, code: str, xcode: str, text: str):
        self.code, self.xcode, self.text = code, xcode, text

    def __repr__(self) -> str:
        return f"Reply({self.code!r}, {self.xcode!r}, {self.text!r})"

    def render(self, **values: object) -> str:
        """The text with its values put in: printable ASCII only, within the line's limit."""
        text = self.text.format(**{k: _printable(str(v)) for k, v in values.items()}) if values else self.text
        room = MAX_LINE - len(self.code) - 1 - (len(self.xcode) + 1 if self.xcode else 0)
        return text[:room]

    def args(self, **values: object) -> tuple[str, str, str]:
        """(code, enhanced code, text), as libmilter's setreply() takes them."""
        return self.code, self.xcode, self.render(**values)

    def line(self, *, more: bool = False, **values: object) -> str:
        """The reply line, without its CRLF; `more`: a line of a multiline reply before its last
        ("250-XFORWARD ...", RFC 5321 4.2.1)."""
        return self.code + ("-" if more else " ") + " ".join(p for p in (self.xcode, self.render(**values)) if p)


def _printable(value: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in value)


# --- the milter ------------------------------------------------------------------------------------
# A bug of ours in a callback (milter/service.py): TEMPFAIL, never a 5xx.
MILTER_INTERNAL_ERROR = Reply("451", "4.3.0", "Temporary local problem, try again later")
# RCPT from a sender an agent or the operator blocked for this recipient (agentmx/blocklist.py).
SENDER_BLOCKED = Reply("550", "5.7.1", "Sender blocked: the agent at {rcpt} refuses mail from this sender")
# The opt-in policy after verification (milter/policy.py, [milter.policy]).
DMARC_REJECT = Reply("550", "5.7.1", "Message rejected per DMARC policy of {domain}")
SPF_FAIL = Reply("550", "5.7.23", "SPF of {domain} does not authorize this host")
DNS_TEMPERROR = Reply("451", "4.7.24", "Temporary DNS failure checking SPF/DMARC, try again later")
# A reject the policy asked for, on a message one of our own checks broke on: deferred instead.
VERIFY_BROKEN = Reply("451", "4.3.0", "Temporary local problem verifying the message")

# --- `agentmx lmtp` (deliver/lmtp.py, deliver/frontend.Result.reply) ------------------------------
DELIVERED = Reply("250", "2.0.0", "{state} id={event_id}")       # exit 0 of the pipe: taken, refused (406), held
DEFERRED = Reply("451", "4.3.0", "{reason}")                     # exit 75: Postfix keeps it and retries
XFORWARD_OK = Reply("250", "2.0.0", "Ok")
XFORWARD_KEYWORD = Reply("250", "", "XFORWARD {attributes}")     # a line of the EHLO answer (more=True)
# The DATA transaction, read by our own loop in aiosmtpd's words (deliver/lmtp.py, _Lmtp.smtp_DATA).
NEED_RCPT = Reply("503", "", "Error: need RCPT command")
DATA_SYNTAX = Reply("501", "", "Syntax: DATA")
START_DATA = Reply("354", "", "End data with <CR><LF>.<CR><LF>")
TOO_MUCH_DATA = Reply("552", "", "Error: Too much mail data")
LINE_TOO_LONG = Reply("500", "", "Line too long (see RFC5321 4.5.3.1.6)")
DATA_OK = Reply("250", "", "OK")                                 # a DATA hook that said nothing (never ours)

ALL = {name: value for name, value in globals().items() if isinstance(value, Reply)}
