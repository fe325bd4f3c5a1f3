"""What the milter answers for a verified message. Default: record only, never reject.

Opt-in per config ([milter.policy], or per recipient domain):
  reject_dmarc     550 5.7.1   DMARC fail whose disposition (after pct) is reject; never one whose
                               policy a trusted ARC forwarder overrode (milter/arc_override.py)
  reject_spf_fail  550 5.7.23  SPF fail of the MAIL FROM identity (the sender's -all matched)
  defer_temperror  451 4.7.24  SPF or DMARC temperror (DNS): the client retries later
A message on which one of our own checks broke (AuthResults.notes) is never rejected: at most
deferred, so that no bug of ours turns into a 5xx.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from agentmx import smtpreplies
from agentmx.config import PolicyConfig

from .results import AuthResults


@dataclass(frozen=True)
class Decision:
    action: str            # "accept", "reject" or "defer"
    code: str = ""         # the reply (agentmx/smtpreplies.py): code, enhanced code, text
    xcode: str = ""
    text: str = ""

    @classmethod
    def answer(cls, action: str, reply: smtpreplies.Reply, **values: object) -> Decision:
        return cls(action, *reply.args(**values))


ACCEPT = Decision("accept")


def combine(policies: Iterable[PolicyConfig]) -> PolicyConfig:
    """One message, several recipient domains: a check rejects only if every domain asks for it."""
    policies = list(policies)
    if not policies:
        return PolicyConfig()
    return PolicyConfig(
        reject_dmarc=all(p.reject_dmarc for p in policies),
        reject_spf_fail=all(p.reject_spf_fail for p in policies),
        defer_temperror=all(p.defer_temperror for p in policies),
    )


def decide(res: AuthResults, policy: PolicyConfig) -> Decision:
    decision = ACCEPT
    if (policy.reject_dmarc and res.dmarc.result == "fail" and res.dmarc.disposition == "reject"
            and res.dmarc.override is None):
        decision = Decision.answer("reject", smtpreplies.DMARC_REJECT, domain=res.dmarc.record_domain)
    elif policy.reject_spf_fail and res.spf.result == "fail":
        decision = Decision.answer("reject", smtpreplies.SPF_FAIL, domain=res.spf.domain)
    elif policy.defer_temperror and "temperror" in (res.spf.result, res.dmarc.result):
        decision = Decision.answer("defer", smtpreplies.DNS_TEMPERROR)
    if decision.action == "reject" and res.notes:
        return Decision.answer("defer", smtpreplies.VERIFY_BROKEN)
    return decision
