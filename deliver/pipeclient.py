"""The lean pipe client: Postfix's pipe(8) runs this per message; a resident `agentmx worker`
(deliver/worker.py) does the work. Standard library only, no agentmx imports: it runs as

    python3 -I -S .../share/agentmx/pipeclient.py --socket PATH --agentmx PATH ARGS...

where ARGS are exactly `agentmx deliver`'s (--config FILE deliver --sender=... --recipient=...).

The contract is deliver's: exit 0 only once the worker says the agent took the message (2xx),
refused it (406) or the route kept it aside; 75 otherwise. If the worker cannot be reached, the
message has not been read yet, so this process becomes `agentmx deliver` itself (exec, same
stdin, same arguments): slower, never lost. If the worker dies after taking the bytes, exit 75:
Postfix retries, and the retry carries the same webhook-id.

Wire format (one request per connection): b"AMX1 " + JSON arguments + b"\\n" + message bytes,
then the client shuts down its write side; the worker answers one line "<exit code> <text>".

Its start-up is most of what it costs, once per message: it imports only the C modules it needs
(_socket, not socket; _json's C encoder for a list of strings, not json; os only to fall back), which
took its CPU per message from ~15 to ~7 ms (python3 -I -S alone: ~5.5 ms).
"""
import _socket
import sys
from _json import encode_basestring_ascii

EX_TEMPFAIL = 75


def _json_strings(items):
    """json.dumps(items) for a list of strings, written by the C encoder json.dumps itself calls
    (_json: its Python modules are not imported; a hand-written encoder was a copy of it)."""
    return "[" + ", ".join(map(encode_basestring_ascii, items)) + "]"


def _split(argv):
    sock = agentmx = None
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] == "--socket":
            sock, i = argv[i + 1], i + 2
        elif argv[i] == "--agentmx":
            agentmx, i = argv[i + 1], i + 2
        else:
            rest.append(argv[i])
            i += 1
    return sock, agentmx, rest


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    sock_path, agentmx, rest = _split(argv)
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(sock_path)
    except OSError:
        conn.close()
        if agentmx:       # no worker: do the work here; stdin is untouched
            import os
            os.execv(agentmx, [agentmx] + rest)
        sys.stderr.write("agentmx pipe client: worker %s unreachable and no --agentmx (deferred)\n" % sock_path)
        return EX_TEMPFAIL
    try:
        conn.sendall(b"AMX1 " + _json_strings(rest).encode() + b"\n")
        stdin = sys.stdin.buffer
        while True:
            chunk = stdin.read(1 << 16)
            if not chunk:
                break
            conn.sendall(chunk)
        conn.shutdown(_socket.SHUT_WR)
        answer = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    except OSError as exc:
        sys.stderr.write("agentmx pipe client: worker connection lost (%s) (deferred)\n" % exc.strerror)
        return EX_TEMPFAIL
    finally:
        conn.close()
    code, _, text = answer.decode("utf-8", "replace").partition(" ")
    if text.strip():
        sys.stderr.write(text.rstrip("\n") + "\n")
    return 0 if code == "0" else EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
