"""A package index for tests, on loopback: builds wheels from a JSON spec and serves them as a PEP 503 simple index.

usage: python3 fake_index.py ROOT SPEC.json
SPEC: [{"package": "name", "version": "1.0.0", "members": {"path/in/wheel": "/file/to/store"}}, ...]
Prints "port N" once the server listens on 127.0.0.1:N, then serves until killed.
"""
import base64, functools, hashlib, http.server, json, os, re, sys, zipfile

root, spec_path = sys.argv[1], sys.argv[2]
os.makedirs(f"{root}/packages", exist_ok=True)
for pkg in json.load(open(spec_path)):
    name, version = pkg["package"], pkg["version"]
    dist = re.sub(r"[-_.]+", "_", name)
    project = re.sub(r"[-_.]+", "-", name).lower()
    wheel = f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = {src: open(path, "rb").read() for src, path in pkg["members"].items()}
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join(f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},{len(v)}\n"
                     for k, v in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    with zipfile.ZipFile(f"{root}/packages/{wheel}", "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in files.items():
            z.writestr(k, v)
    digest = hashlib.sha256(open(f"{root}/packages/{wheel}", "rb").read()).hexdigest()
    os.makedirs(f"{root}/simple/{project}", exist_ok=True)
    with open(f"{root}/simple/{project}/index.html", "w") as f:
        f.write(f'<html><body><a href="../../packages/{wheel}#sha256={digest}">{wheel}</a></body></html>')


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
