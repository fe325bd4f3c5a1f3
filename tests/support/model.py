"""A local server that speaks the OpenAI chat-completions protocol with scripted answers, for the
agent worker's tests: each POST /v1/chat/completions takes the next step of the script. A step is
a function of the request (the messages, the tools) returning the assistant message, or an
(HTTP status, delay) pair for failures. Every request is recorded."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def tool_call(name: str, args: dict, call_id: str | None = None) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id or f"call_{name}_{time.time_ns()}", "type": "function",
         "function": {"name": name, "arguments": json.dumps(args)}}]}


class ModelServer:
    def __init__(self):
        self.script: list = []
        self.requests: list[dict] = []
        me = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                me.requests.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
                step = me.script.pop(0) if me.script else {"role": "assistant", "content": "Nothing to do."}
                if isinstance(step, tuple):
                    status, delay = step
                    time.sleep(delay)
                    out, code = json.dumps({"error": {"message": "scripted failure"}}).encode(), status
                else:
                    msg = step(body) if callable(step) else step
                    out, code = json.dumps({"id": "chatcmpl-test", "object": "chat.completion", "model": body["model"],
                                            "choices": [{"index": 0, "message": msg,
                                                         "finish_reason": "tool_calls" if msg.get("tool_calls") else "stop"}]
                                            }).encode(), 200
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
