"""httpGet and tcpSocket probes (pkg/kubelet/prober/prober.go; pkg/probe/http,
pkg/probe/tcp), run by the runner inside the pod's network namespace
(`nsenter -t <sandbox pid> -n python -m podrunner.netprobe ...`).

usage: netprobe http HOST PORT PATH TIMEOUT [SCHEME [NAME:VALUE...]]
       netprobe tcp HOST PORT TIMEOUT
Exit 0: success (HTTP 2xx/3xx; TCP connected), 1: failure (reason on stderr)."""

import http.client
import socket
import ssl
import sys


def http_probe(host, port, path, timeout, scheme="HTTP", headers=()):
    if scheme.upper() == "HTTPS":
        # The kubelet does not verify the certificate of an HTTPS probe.
        context = ssl._create_unverified_context()  # noqa: SLF001
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    request_headers = {"User-Agent": "kube-probe/podrunner", "Accept": "*/*"}
    for header in headers:
        name, _, value = header.partition(":")
        request_headers[name] = value
    try:
        conn.request("GET", path or "/", headers=request_headers)
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as err:
        return False, str(err)
    finally:
        conn.close()
    # pkg/probe/http/http.go: 200 <= code < 400 is success.
    return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"


def tcp_probe(host, port, timeout):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as err:
        return False, str(err)


def main(argv):
    if len(argv) >= 5 and argv[0] == "http":
        ok, why = http_probe(argv[1], int(argv[2]), argv[3], float(argv[4]),
                             argv[5] if len(argv) > 5 else "HTTP", argv[6:])
    elif len(argv) == 4 and argv[0] == "tcp":
        ok, why = tcp_probe(argv[1], int(argv[2]), float(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    if not ok:
        print(why, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
