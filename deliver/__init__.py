"""agentmx.deliver: a message for an agent -> signed JSON event -> POST (or the inbox, or the agent).

deliver(raw, envelope, config) in core.py is the whole delivery as one call; parse.py, extract.py,
event.py and authread.py are its pure stages, http.py and the store its edges. The contract:
exit 0 when the agent took (2xx) or refused (406) the message, 75 (EX_TEMPFAIL) otherwise.

Its three front-ends, on one shared module (frontend.py: envelope, outcome line, exit code or
SMTP reply, configuration reload, the store once per process, prefork):
    pipe.py        `agentmx deliver`, the Postfix pipe program (one process per message)
    worker.py      `agentmx worker`, resident, behind pipeclient.py (stdlib only, python3 -I -S)
    lmtp.py        `agentmx lmtp`, for Postfix's lmtp(8)
Nothing is imported here: the pipe process starts once per message.
"""
