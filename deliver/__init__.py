"""agentmx.deliver: the Postfix pipe program (message -> signed JSON event -> POST).

Not built yet: it is issue 3. The contract it will keep is in ../shared/DESIGN.md and README.md:
exit 0 when the agent took (2xx) or refused (406) the message, 75 (EX_TEMPFAIL) otherwise.
"""
