"""Verification codes in a message: the one-time codes an agent that signs up for things must type.

A code is a token of 4-8 digits ("583920", "583 920", "0 4 8 3 2 1" come out as "583920"), a
4-8 character mix of capitals and digits ("Z8K4QP"), or two groups of 3-4 joined by a hyphen
("824-113", "K7Q-92X", kept as written), that the text ties to a word for such a code: "code",
"OTP", "PIN", "TAN", "one-time", "verification code", "Bestätigungscode", "código", "codice",
"認証コード", "验证码", ... A number tied to another label is not one: an order, booking, ticket,
invoice, account, customer, tracking, phone, room or reference number, a promo, postal, error or
member code, a price, an amount, a year, a time, a date, a postcode, a version, an IBAN.

How: each line is read as a sequence of labels (code words, other-number words, weak words such as
"sign in" or "confirm") and number-like runs. A run whose nearest label on its left is another
label (with nothing but a few characters between) is that label's number and never a code; one right
after a code word scores highest; then one with a code word further left in its sentence, one followed
by "... is your code", one alone on its line under a line that names a code, one near a weak word
when the subject speaks of a code; less for letters among the digits, a year, a postcode or a
promotion ("use code 4821 for 10% off"). Runs that score below a threshold are dropped; the rest come
out best first (ties: earlier first). Pure and bounded: the subject's first 1,000 characters and the
text's first 20,000; every pattern runs in linear time (no nested quantifiers that can backtrack).
"""
from __future__ import annotations

import functools
import re
from typing import Callable

SUBJECT_MAX = 1_000
TEXT_MAX = 20_000
MAX_CODES = 10
_THRESHOLD = 5.0


class _Lazy:
    """A pattern compiled at its first use, not at import. The pipe program (`agentmx deliver`, a
    process per message) imports this module for every message, and compiling these took ~5.5 ms
    of its start-up (python -X importtime; _LABEL alone ~3 ms); a message without a code-shaped
    number (most mail) never needs the labels, the scores or the penalties."""

    def __init__(self, *args):
        self._args = args

    def __getattr__(self, name: str):
        """Called only for a name not yet on the instance: the pattern's bound method is kept on it,
        so each later .search/.finditer is a plain attribute (a resident worker pays nothing)."""
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(re.compile(*self._args), name)   # re caches compiled patterns: compiled once
        setattr(self, name, value)         # two threads may both set it: the same pattern's method
        return value


# Not codes, masked before anything else: links, addresses, IPv4 addresses, IBANs, dates, times,
# amounts with a currency sign, versions (1.2.3), numbers with decimals or thousands separators.
_MASK = re.compile(
    r"""https?://[^\s<>"'\])]+|www\.[^\s<>"'\])]+|[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}"""
    r"|\b\d{1,3}(?:\.\d{1,3}){3}\b"
    r"|\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"
    r"|\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b|\b\d{1,2}:\d{2}(?::\d{2})?\b"
    r"|\b\d+(?:[.,]\d+)+\b")

# A run of capitals/digits tokens (single spaces or hyphens between); never preceded or followed by
# a letter, a digit or a character that makes it part of something else (a path, an amount, an id).
_RUN = re.compile(
    r"(?<![0-9A-Za-z\u00C0-\u024F_/@#.,+$€£¥%&=?\\-])"
    r"[A-Z0-9]+(?:-[A-Z0-9]+)*(?: [A-Z0-9]+(?:-[A-Z0-9]+)*)*"
    r"(?![0-9A-Za-z\u00C0-\u024F_/@\\-])")

# Labels. At one position the first alternative wins: other-number labels (d) come before code words
# (c), so "promo code", "Gutscheincode" or "tracking code" are never read as "code".
_D = "|".join([
    # compounds and phrases with "code" that are not verification codes
    r"(?:promo(?:tional)?|discount|coupon|voucher|gift|referral|invite|tracking|postal|post|zip|area|"
    r"country|sort|swift|bic|tax|error|exit|status|return|source|qr|bar|product|article|item|order|"
    r"authori[sz]ation|auth\.?|reason|response|http|dial(?:ing)?|access point|member(?:ship)?|customer|"
    r"client|account|loyalty|reference|booking|reservation|course|class|group|to)[- ]?codes?\b",
    r"(?:gutschein|rabatt|aktions|promo|fehler|status|länder|steuer|post|bar|zip|qr-|korting|actie|"
    r"waarde|kado)s?codes?\b",
    r"code\s+(?:promo|postal|d'erreur|de\s+suivi|barre|client|article|ape|naf)\w*",
    r"c[oó]digo\s+(?:postal|promocional|de\s+(?:descuento|seguimiento|barras|rastreamento|rastreio|"
    r"rastreo|envío|cliente|produto|producto|promo\w*|cupom|cupón))",
    r"codice\s+(?:sconto|promo\w*|fiscale|postale|cliente|articolo|prodotto|di\s+(?:tracciamento|spedizione|"
    r"sconto))",
    r"unicode|decode[ds]?|encode[ds]?|opcode|coding|codecs?",
    # en
    r"order|orders|booking|reservation|ticket|invoice|receipt|reference|ref|account|acct|customer|client|"
    r"member(?:ship)?|case|transaction|txn|merchant|card|ending(?:\s+in)?|room|flight|seat|gate|suite|"
    r"apt|apartment|flat|unit|job|build|issue|version|release|patient|candidate|policy|contract|parcel|"
    r"shipment|package|sku|serial|id|no|nr|number|tel|phone|telephone|fax|mobile|cell|call|postcode|"
    r"zip|iban|bic|swift|vat|amount|total|subtotal|price|balance|budget|quote|extension|ext|box|"
    r"route|platform|pickup|pick-up|step|page|chapter|year|username|user|uid|pid|pnr|"
    r"confirmation\s+(?:no|nr|number|#)|record\s+locator|locator|routing|"
    r"reply\s+\w+(?:\s+\w+)?\s+to|text\s+\w+\s+to",
    # de
    r"bestellung|bestellnummer|rechnung|rechnungsnummer|kundennummer|kunden-nr|vertragsnummer|vertrag|"
    r"auftrag|auftragsnummer|sendung|sendungsnummer|buchung|buchungsnummer|reservierung|konto|"
    r"kontonummer|telefon|mobil|nummer|postleitzahl|plz|packstation|postfach|zimmer|artikel|"
    r"artikelnummer|steuernummer|ust-idnr|hrb|vorgang|vorgangsnummer|aktenzeichen|betrag|summe|"
    r"mitgliedsnummer|fall",
    # fr
    r"commande|facture|reçu|réservation|référence|numéro|n°|nº|compte|colis|suivi|téléphone|tél|"
    r"chambre|vol|dossier|siret|siren|tva|montant|prix|ticket",
    # es, pt
    r"pedido|factura|reserva|referencia|cliente|número|cuenta|envío|seguimiento|teléfono|habitación|"
    r"vuelo|nif|cif|importe|precio|expediente|localizador|fatura|nota\s+fiscal|referência|conta|"
    r"rastreamento|rastreio|telefone|cep|protocolo|cpf|cnpj|valor|boleto",
    # it, nl
    r"ordine|fattura|prenotazione|riferimento|numero|conto|spedizione|tracciamento|telefono|camera|volo|"
    r"cap|p\.\s?iva|partita\s+iva|importo|totale|pratica|bestelling|bestelnummer|factuur|factuurnummer|"
    r"reservering|referentie|klant|klantnummer|rekening|zending|telefoon|kamer|vlucht|kvk|btw|bedrag|"
    r"totaal|ordernummer",
])
_D_CJK = (r"注文番号|予約番号|電話番号|電話|郵便番号|〒|会員番号|お問い合わせ番号|追跡番号|伝票番号|請求書番号|"
          r"金額|合計|価格|番号|订单号|订单编号|订单|运单号|快递单号|单号|发票号码|发票|联系电话|客服电话|电话|"
          r"手机号?|金额|编号|会员号|房间|航班|纳税人识别号|号码|号")
_C = "|".join([
    r"(?:one[- ]time|single[- ]use|verification|verify|confirmation|security|sign[- ]?in|sign[- ]?up|"
    r"log[- ]?in|login|access|activation|authentication|auth|magic|launch|backup|recovery|reset|2fa|"
    r"mfa|two[- ]factor|2-step|two-step|check[- ]in|door|entry|gate|unlock|pairing|device|otp|"
    r"registration)\s+(?:pass)?codes?",
    r"passcodes?|pass\s+codes?|otp|totp|pin|tan|m-?tan|sms-?tan|2fa|mfa|one[- ]time\s+(?:password|pin)|"
    r"codes?|tokens?|verification",
    r"[^\W\d_]{1,30}codes?\b",               # Bestätigungscode, Sicherheitscode, verificatiecode, inlogcode
    r"einmal(?:kennwort|passwort)|kennwort|c[oó]digo|codice|clave\s+(?:dinámica|de\s+acceso)|"
    r"mot\s+de\s+passe\s+(?:à\s+usage\s+unique|temporaire)|usage\s+unique|senha\s+(?:temporária|de\s+uso\s+único)|"
    r"eenmalige\s+(?:code|wachtwoord)|toegangscode|wachtwoord",
])
_C_CJK = (r"認証コード|確認コード|認証番号|確認番号|暗証番号|ワンタイムパスワード|ログインコード|コード|パスワード|"
          r"验证码|校验码|动态码|动态密码|确认码|验证代码|安全码|登录码|口令|密码|驗證碼|認證碼")
_WEAK = (r"verify|verification|confirm|confirmation|activate|sign[- ]?in|log[- ]?in|login|reset|enter|"
         r"saisissez|introduce|inserisci|digite|insira|eingeben|入力|"
         r"authenticate|bestätigen|anmelden|anmeldung|confirmer|connexion|confirmar|iniciar\s+sesión|"
         r"acceder|accedere|inloggen|bevestigen|ログイン|登录|認証|验证")
# The fixed word start and first letter up front let the regex engine skip positions quickly.
_LABEL = _Lazy(
    rf"(?<![^\W\d_])(?=[^\W\d_#°º〒])(?:(?P<d>(?:{_D})(?![^\W\d_]))|(?P<c>(?:{_C})(?![^\W\d_]))"
    rf"|(?P<w>(?:{_WEAK})(?![^\W\d_])))", re.I)
_LABEL_CJK = _Lazy(rf"(?P<d>{_D_CJK})|(?P<c>{_C_CJK})")
_CJK = _Lazy(r"[\u3040-\u30ff\u3400-\u9fff\uff00-\uffef]")

# A label binds the run right after it across at most this many characters.
_BIND_OTHER = 30
_BIND_CODE = 60
# How far from a number its labels are sought (the longest reach below, and a label's length).
_LOOK_BACK, _LOOK_AHEAD = 200, 80
# Between a code word and its code: "is", ":", "lautet", "est", "は", "为" ...
_CONNECTOR = _Lazy(r"(?:\b(?:is|are|was|lautet|ist|est|es|é|è|ni|estas)\b|[:：=为是は])[\s*_\"'«»“”「」【】]*$",
                        re.I)
_SENTENCE_END = _Lazy(r"[.!?](?:\s+[A-Z\u00C0-\u00DD]|\s*$)|[。！？]")
# A quantity or an amount after the number: "1200 subscribers", "2500 USD", "3,980円".
_UNIT_AFTER = _Lazy(
    r"\s?(?:[%€$£¥円元件名人個分日年月次]|(?:eur|euros?|usd|gbp|chf|jpy|cny|rmb|dollars?|pounds?|yen|"
    r"units?|items?|pieces?|pcs|people|persons?|personas?|personnes?|persone|personen|guests?|members?|"
    r"users?|subscribers?|customers?|developers?|articles?|artículos|products?|seconds?|secs?|minutes?|"
    r"mins?|hours?|hrs?|days?|weeks?|months?|years?|km|kg|mi|miles?|cm|mm|lbs?|gb|mb|kb|tb|words?|"
    r"pages?|points?|votes?|views?|downloads?|times|copies|bugs?|requests?|commits?|files?|emails?|"
    r"messages?|stück|minuten|stunden|tage|nutzer|kunden|minutos|horas|días|heures|jours|pezzi|minuti|"
    r"ore|giorni|stuks|uur|dagen|uhr|h)\b)", re.I)
_UNIT_BEFORE = _Lazy(r"(?:[$€£¥]|\b(?:eur|usd|gbp|chf|r\$|rmb|us\$))\s?$", re.I)
_TIME_BEFORE = _Lazy(r"\b(?:at|um|om|alle|à|a\s+las|from|until|till|by|before|after|ab|bis|von|dès)\s+$", re.I)
# An address: a postcode before a city ("10115 Berlin", "1015 CJ"), a US state before a ZIP,
# a house number before a street name ("1600 Amphitheatre").
_CITY_AFTER = _Lazy(r" (?:[A-Z]{2}\b|[A-Z\u00C0-\u00DD][a-z\u00DF-\u00FF]+)")
_STATE_BEFORE = _Lazy(r"\b[A-Z]{2} $")
_STANDALONE_JUNK = _Lazy(r"^[\s*_#>|`~:·•()\[\]\"'«»“”「」【】-]*$")
_YEAR = _Lazy(r"(?:19|20)\d\d")
_DIGIT = re.compile(r"\d")
_PROMO = _Lazy(r"\d\s?%\s?(?:off|de\s+(?:remise|réduction|descuento|desconto))|\b(?:discount|coupon|voucher|promo|"
                    r"rabatt|gutschein|réduction|remise|descuento|sconto|korting|desconto)\b", re.I)


def codes(subject: str | None, text: str | None) -> list[str]:
    """The verification codes of a message, the most likely first (at most MAX_CODES)."""
    subject = (subject or "")[:SUBJECT_MAX]
    lines = (text or "")[:TEXT_MAX].splitlines()
    # Read only when a line of the text holds a code-shaped run (its labels need _LABEL: _Lazy).
    subject_bonus = functools.cache(lambda: _subject_bonus(subject))
    scored: list[tuple[float, int, str]] = []
    for i, line in enumerate([subject] + lines):        # the subject first, then the text's lines
        if not _DIGIT.search(line):
            continue
        previous = lines[max(0, i - 4):i - 1] if i else []
        bonus = subject_bonus if i else _no_bonus
        for score, code in _line_codes(_masked(line), previous, bonus):
            scored.append((score, len(scored), code))
    found: dict[str, str] = {}
    for score, _, code in sorted(scored, key=lambda s: (-s[0], s[1])):
        if score >= _THRESHOLD:
            found.setdefault(code.replace("-", ""), code)
    return list(found.values())[:MAX_CODES]


def _subject_bonus(subject: str) -> float:
    kinds = {kind for _, _, kind in _labels(_masked(subject))}
    return 2.0 if "c" in kinds else 1.0 if "w" in kinds else 0.0


def _no_bonus() -> float:
    return 0.0


def _masked(line: str) -> str:
    return _MASK.sub(lambda m: " " * len(m.group(0)), line)


def _labels(line: str, near: list[tuple[int, int]] | None = None) -> list[tuple[int, int, str]]:
    """The labels of a line (code words "c", other-number words "d", weak words "w"); with `near`,
    only those close enough to these spans to count (the scan is the costly part)."""
    windows: list[list[int]] = []
    for start, end in near if near is not None else [(0, len(line))]:
        lo, hi = max(0, start - _LOOK_BACK), end + _LOOK_AHEAD
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], hi)
        else:
            windows.append([lo, hi])
    patterns = (_LABEL, _LABEL_CJK) if _CJK.search(line) else (_LABEL,)
    out = []
    for lo, hi in windows:
        for pattern in patterns:
            out.extend((m.start(), m.end(), m.lastgroup or "") for m in pattern.finditer(line, lo, hi))
    return sorted(out) if len(patterns) > 1 else out


def _line_codes(line: str, previous: list[str], bonus_of: Callable[[], float]) -> list[tuple[float, str]]:
    runs = [run for m in _RUN.finditer(line) for run in _split_run(m.group(0), m.start())]
    if not any(value for _, _, value in runs):
        return []
    bonus = bonus_of()
    labels = _labels(line, [(start, end) for start, end, value in runs if value])
    events: list[tuple[int, int, str, str | None]] = [(s, e, k, None) for s, e, k in labels]
    spans = iter(labels)
    span = next(spans, None)
    for start, end, value in runs:
        while span is not None and span[1] <= start:
            span = next(spans, None)
        if span is None or end <= span[0]:              # a label ("2FA", "OTP") is not a number
            events.append((start, end, "r", value))
    events.sort(key=lambda ev: ev[0])
    out = []
    for i, (start, end, kind, value) in enumerate(events):
        if kind == "r" and value is not None:
            score = _score(line, events, i, previous) + bonus + _shape_penalty(line, start, end, value, events, i)
            if score > -50:
                out.append((score, value))
    return out


def _split_run(run: str, offset: int) -> list[tuple[int, int, str | None]]:
    """The candidate codes of a run: its digit-bearing tokens grouped where they touch; each group
    is a code shape (value) or a number that is not one (None: long numbers, postcodes, IBANs)."""
    groups: list[list[tuple[int, str]]] = [[]]
    pos = offset
    for token in run.split(" "):
        if any(ch.isdigit() for ch in token):
            groups[-1].append((pos, token))
        elif groups[-1]:
            groups.append([])
        pos += len(token) + 1
    out = []
    for group in groups:
        if group:
            start, end = group[0][0], group[-1][0] + len(group[-1][1])
            out.append((start, end, _shape([t for _, t in group])))
    return out


def _shape(tokens: list[str]) -> str | None:
    if len(tokens) == 1:
        token = tokens[0]
        if "-" in token:
            parts = token.split("-")
            if len(parts) == 2 and all(3 <= len(p) <= 4 for p in parts) and not _time_range(parts):
                return token
            return None
        digits = sum(ch.isdigit() for ch in token)
        if 4 <= len(token) <= 8 and (digits == len(token) or digits >= 2):
            return token
        return None
    if not all(t.isdigit() for t in tokens):
        return None
    total = sum(len(t) for t in tokens)
    if not 4 <= total <= 8:
        return None
    if all(len(t) == 1 for t in tokens) or (len(tokens) <= 3 and all(2 <= len(t) <= 4 for t in tokens)):
        return "".join(tokens)
    return None


def _time_range(parts: list[str]) -> bool:
    return all(len(p) == 4 and p.isdigit() and int(p[:2]) < 24 and int(p[2:]) < 60 for p in parts)


def _score(line: str, events: list, i: int, previous: list[str]) -> float:
    start, end = events[i][0], events[i][1]
    prev = events[i - 1] if i else None
    if prev is not None:
        gap = line[prev[1]:start]
        if prev[2] == "d" and len(gap) <= _BIND_OTHER:
            return -100.0                                   # another label's number
        if prev[2] == "c" and len(gap) <= _BIND_CODE and not _SENTENCE_END.search(gap):
            return 10.0 + (1.0 if _CONNECTOR.search(gap) else 0.0) - len(gap) / 40
    score = 0.0
    # a code word further left in the same sentence ("passcode for transaction X at Y is Z")
    for j in range(i - 1, -1, -1):
        ev = events[j]
        gap = line[ev[1]:start]
        if len(gap) > 150 or _SENTENCE_END.search(gap):
            break
        if ev[2] == "c":
            score = 6.0 + (1.0 if _CONNECTOR.search(line[max(0, start - 20):start]) else 0.0)
            break
    # "482913 is your code", "Use 483920 to sign in"
    nxt = events[i + 1] if i + 1 < len(events) else None
    after = nxt is not None and nxt[2] in "cw" and len(line[end:nxt[0]]) <= 40 and \
        not _SENTENCE_END.search(line[end:nxt[0]])
    if after:
        score = max(score, 7.0 if nxt[2] == "c" else 4.0)
    if prev is not None and prev[2] == "w" and len(line[prev[1]:start]) <= 40:
        # a weak word before; "Enter 731842 to confirm": one on both sides
        score = max(score, 5.0 if after and nxt[2] == "w" else 4.0)
    if len(line) <= 200 and _STANDALONE_JUNK.match(line[:start]) and _STANDALONE_JUNK.match(line[end:]):
        score = max(score, _standalone(previous))
    return score


def _standalone(previous: list[str]) -> float:
    """A code alone on its line: what the line(s) above it name ("Order number:" is not a code's)."""
    for line in reversed([p for p in previous if p.strip()][-2:]):
        masked = _masked(line)
        labels = _labels(masked)
        if labels:
            start, end, kind = labels[-1]
            if kind == "d" and _STANDALONE_JUNK.match(masked[end:]):
                return -100.0
            if any(k == "c" for _, _, k in labels):
                return 8.0
            return 5.0
    return 3.0


def _shape_penalty(line: str, start: int, end: int, value: str, events: list, i: int) -> float:
    before, after = line[max(0, start - 12):start], line[end:end + 14]
    tight_code = i > 0 and events[i - 1][2] == "c" and len(line[events[i - 1][1]:start]) <= 12
    if _UNIT_AFTER.match(after) or _UNIT_BEFORE.search(before):
        return -100.0
    digits = value.replace(" ", "").replace("-", "")
    if digits.isdigit() and len(digits) == 4 and _TIME_BEFORE.search(before) and \
            int(digits[:2]) < 24 and int(digits[2:]) < 60:
        return -100.0
    penalty = 0.0
    if _PROMO.search(line, max(0, start - 200), end + 200):
        penalty -= 6.0                                      # "use code 4821 for 10% off": a promotion
    if not digits.isdigit():
        penalty -= 2.0                                      # letters and digits: a model, a flight, a room
    if _YEAR.fullmatch(digits) and not tight_code:
        penalty -= 6.0
    if digits.isdigit() and len(digits) in (4, 5) and not tight_code and \
            (_CITY_AFTER.match(after) or _STATE_BEFORE.search(before)):
        penalty -= 6.0                                      # a postcode or a house number
    return penalty
