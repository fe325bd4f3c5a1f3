"""What agents get out of a message: reply text (the formats of Gmail, Outlook, Apple Mail,
German and French clients), auto-submitted signals, verification codes and links, calendars."""
from __future__ import annotations

import pytest

from agentmx.deliver import extract
from agentmx.deliver.parse import parse

pytestmark = pytest.mark.unit

REPLIES = {
    "gmail": ("Sounds good, see you Thursday.\n\nOn Mon, Nov 23, 2026 at 10:02 AM Alice Example "
              "<alice@example.org> wrote:\n> Shall we meet on Thursday?\n> \n> Alice\n"),
    "outlook": ("Thursday works for me.\n\n________________________________\nFrom: Alice Example "
                "<alice@example.org>\nSent: Monday, November 23, 2026 10:02 AM\nTo: Agent <agent@example.com>\n"
                "Subject: Meeting\n\nShall we meet on Thursday?\n"),
    "outlook-de": ("Donnerstag passt.\n\nVon: Alice Example <alice@example.org>\nGesendet: Montag, 23. "
                   "November 2026 10:02\nAn: Agent <agent@example.com>\nBetreff: Treffen\n\nDonnerstag?\n"),
    "apple": ("Yes, Thursday.\n\nSent from my iPhone\n\n> On 23 Nov 2026, at 10:02, Alice Example "
              "<alice@example.org> wrote:\n> \n> Shall we meet on Thursday?\n"),
    "german": ("Ja, Donnerstag.\n\nAm Mo., 23. Nov. 2026 um 10:02 Uhr schrieb Alice Example "
               "<alice@example.org>:\n> Donnerstag?\n"),
    "french": ("Oui, jeudi.\n\nLe lun. 23 nov. 2026 à 10:02, Alice Example <alice@example.org> a écrit :\n"
               "> Jeudi ?\n"),
    "signature": "Thursday it is.\n\n-- \nBob\nACME Corp\n",
}
NEW_TEXT = {"gmail": "Sounds good, see you Thursday.", "outlook": "Thursday works for me.",
            "outlook-de": "Donnerstag passt.", "apple": "Yes, Thursday.", "german": "Ja, Donnerstag.",
            "french": "Oui, jeudi.", "signature": "Thursday it is."}


@pytest.mark.parametrize("client", REPLIES)
def test_reply_text_keeps_only_the_new_text(client):
    reply = extract.reply_text(REPLIES[client])
    assert reply.strip().startswith(NEW_TEXT[client])
    assert "Shall we meet" not in reply and "Donnerstag?" not in reply and "Jeudi ?" not in reply
    assert "ACME" not in reply


def test_interleaved_reply_never_loses_new_text():
    text = "> Question one?\nAnswer one.\n\n> Question two?\nAnswer two.\n"
    reply = extract.reply_text(text)
    assert "Answer one." in reply and "Answer two." in reply


def headers(*pairs: str, ctype: str = "text/plain") -> bytes:
    return ("".join(f"{p}\r\n" for p in pairs) + f"Content-Type: {ctype}\r\n\r\nbody\r\n").encode()


@pytest.mark.parametrize("raw,mail_from,expected", [
    (headers("From: a@example.org", "Subject: hello"), "a@example.org", None),
    (headers("From: a@example.org", "Auto-Submitted: auto-replied"), "a@example.org", "auto-replied"),
    (headers("From: a@example.org", "Auto-Submitted: auto-generated"), "a@example.org", "auto-generated"),
    (headers("From: a@example.org", "Auto-Submitted: no"), "a@example.org", None),
    (headers("From: a@example.org", "Precedence: bulk"), "a@example.org", "auto-generated"),
    (headers("From: a@example.org", "List-Id: <dev.lists.example.org>"), "a@example.org", "list"),
    (headers("From: a@example.org", "List-Unsubscribe: <mailto:u@example.org>"), "a@example.org", "list"),
    (headers("From: a@example.org", "X-Auto-Response-Suppress: All"), "a@example.org", "auto-generated"),
    (headers("From: a@example.org", "Subject: hi"), "", "bounce"),
    (headers("From: MAILER-DAEMON@mx.example.org", "Subject: Undelivered Mail Returned to Sender"),
     "x@y", "bounce"),
    (headers("From: a@example.org", ctype="multipart/report; report-type=delivery-status; boundary=x"),
     "a@example.org", "bounce"),
])
def test_auto_submitted(raw, mail_from, expected):
    assert extract.auto_submitted(parse(raw), mail_from) == expected


@pytest.mark.parametrize("subject,text,expected", [
    ("Your verification code", "Use 483920 to sign in.", ["483920"]),
    ("Welcome", "Your one-time code: 7731\n\nThanks", ["7731"]),
    ("Sign in", "Enter this code: ABC-123 to continue", ["ABC-123"]),
    ("Invoice 2026", "Total: 1200 EUR due on 2026-12-01. Order 55512.", []),
    ("Hello", "Call me at 555 1234.", []),
])
def test_codes(subject, text, expected):
    assert extract.codes(subject, text) == expected


def test_links_from_html_and_text():
    html = ('<p><a href="https://app.example.com/verify?t=abc&amp;u=1">Confirm your email</a>'
            ' <a href="https://example.com/blog">Blog</a> <a href="mailto:x@y">mail</a></p>')
    links = extract.links("See https://example.com/docs.", html)
    assert links == [
        {"url": "https://app.example.com/verify?t=abc&u=1", "text": "Confirm your email", "verification": True},
        {"url": "https://example.com/blog", "text": "Blog", "verification": False},
        {"url": "https://example.com/docs", "text": None, "verification": False},
    ]


INVITE = """BEGIN:VCALENDAR\r
METHOD:REQUEST\r
PRODID:Microsoft Exchange Server 2010\r
VERSION:2.0\r
BEGIN:VTIMEZONE\r
TZID:W. Europe Standard Time\r
BEGIN:STANDARD\r
DTSTART:16010101T030000\r
TZOFFSETFROM:+0200\r
TZOFFSETTO:+0100\r
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10\r
END:STANDARD\r
BEGIN:DAYLIGHT\r
DTSTART:16010101T020000\r
TZOFFSETFROM:+0100\r
TZOFFSETTO:+0200\r
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3\r
END:DAYLIGHT\r
END:VTIMEZONE\r
BEGIN:VEVENT\r
ORGANIZER;CN=Alice Example:mailto:alice@example.org\r
ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:agent@example.com\r
ATTENDEE;ROLE=OPT-PARTICIPANT:mailto:bob@example.org\r
SUMMARY;LANGUAGE=en-US:Quarterly review\r
DTSTART;TZID=W. Europe Standard Time:20261203T140000\r
DTEND;TZID=W. Europe Standard Time:20261203T150000\r
UID:040000008200E00074C5B7101A82E008\r
LOCATION;LANGUAGE=en-US:Room 4\r
END:VEVENT\r
END:VCALENDAR\r
"""


def test_outlook_invitation_becomes_a_calendar_entry():
    raw = ("From: alice@example.org\r\nTo: agent@example.com\r\nSubject: Quarterly review\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
           "Invitation\r\n--b\r\nContent-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n"
           + INVITE + "--b--\r\n").encode()
    parsed = parse(raw)
    defects: list[str] = []
    (entry,) = extract.calendar_entries(parsed.calendars, defects)
    assert entry["method"] == "REQUEST" and entry["summary"] == "Quarterly review"
    assert entry["organizer"] == "alice@example.org"
    assert entry["attendees"] == ["agent@example.com", "bob@example.org"]
    assert entry["start"].startswith("2026-12-03T14:00:00") and entry["end"].startswith("2026-12-03T15:00:00")
    assert entry["location"] == "Room 4" and entry["uid"] == "040000008200E00074C5B7101A82E008"
    assert defects == []


def test_broken_calendar_is_a_defect_not_a_crash():
    defects: list[str] = []
    assert extract.calendar_entries(["BEGIN:VCALENDAR\r\nnonsense"], defects) == []
    assert defects and "calendar" in defects[0]


def test_thread_id_rules():
    assert extract.thread_id("<c@x>", ["<b@x>"], ["<a@x>", "<b@x>"]) == "<a@x>"
    assert extract.thread_id("<c@x>", ["<b@x>"], []) == "<b@x>"
    assert extract.thread_id("<c@x>", [], []) == "<c@x>"
