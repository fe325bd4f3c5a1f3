"""agentmx.deliver: the Postfix pipe program (message -> signed JSON event -> POST).

deliver(raw, envelope, config) in core.py is the whole delivery as one call; parse.py, extract.py,
event.py and authread.py are its pure stages, http.py and the store its edges. The contract:
exit 0 when the agent took (2xx) or refused (406) the message, 75 (EX_TEMPFAIL) otherwise.
Nothing is imported here: the pipe process starts once per message.
"""
