"""agentmx.milter: inbound authentication (SPF, DKIM, ARC, DMARC) as a Postfix milter.

The checks are pure functions of the message, the SMTP envelope and an injected DNS session
(`authenticate.authenticate`); `service` is the only module that speaks the milter protocol.
Nothing is imported here so that `agentmx auth` and the tests load only what they use.
"""
