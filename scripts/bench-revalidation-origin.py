# A small origin for the revalidation measurement: 1 KiB JSON with an ETag and no-cache, or 304
# when If-None-Match matches. Threaded, keep-alive.
import http.server, socketserver, sys
BODY = (b'{"data":"' + b"x" * 1000 + b'"}')
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.headers.get("If-None-Match") == '"v1"':
            self.send_response(304); self.send_header("ETag", '"v1"'); self.send_header("Cache-Control", "no-cache"); self.send_header("Content-Length", "0"); self.end_headers(); return
        self.send_response(200); self.send_header("ETag", '"v1"'); self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(BODY))); self.end_headers(); self.wfile.write(BODY)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
S(("127.0.0.1", 18080), H).serve_forever()
