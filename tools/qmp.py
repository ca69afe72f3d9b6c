#!/usr/bin/env python3
"""qmp.py SOCKET COMMAND...: sends QMP commands (JSON) to a QEMU monitor socket
in order, after the capabilities handshake, and prints the last answer."""
import json
import socket
import sys


def main():
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    f = s.makefile("rw")

    def cmd(c):
        f.write(c + "\n")
        f.flush()
        while True:
            m = json.loads(f.readline())
            if "return" in m or "error" in m:
                return m

    json.loads(f.readline())  # the greeting
    cmd('{"execute":"qmp_capabilities"}')
    answer = None
    for c in sys.argv[2:]:
        answer = cmd(c)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
