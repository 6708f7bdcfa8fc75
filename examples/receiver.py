# examples/receiver.py: checks each delivery's signature; answers 204 (401: invalid; 410 on /gone)
import base64, hashlib, hmac, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = base64.b64decode(os.environ["WEBHOOK_SECRET"].removeprefix("whsec_"))

def signed(headers, body):
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > 300:          # refuse old (replayed) deliveries
        return False
    mac = hmac.new(KEY, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(hmac.compare_digest(sig.partition(",")[2], expected)
               for sig in headers["webhook-signature"].split())   # one per active secret

class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"                          # keep-alive, one thread per connection

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        valid = signed(self.headers, body)
        print(self.headers["webhook-id"], "valid" if valid else "INVALID", body.decode(), flush=True)
        gone = self.path == "/gone"                        # plays an endpoint that was removed
        self.send_response(401 if not valid else 410 if gone else 204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):                          # quiet: the line above says it all
        pass

ThreadingHTTPServer(("127.0.0.1", 9000), Receiver).serve_forever()
