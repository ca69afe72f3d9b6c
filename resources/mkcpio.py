#!/usr/bin/env python3
"""Writes an uncompressed newc cpio archive (a Linux initramfs) from a spec.

The spec has one entry per line, in gen_init_cpio's syntax:
    dir   <name> <mode>
    file  <name> <source path> <mode>
    nod   <name> <mode> <c|b> <major> <minor>
    slink <name> <target> <mode>
Blank lines and lines starting with '#' are ignored. Every entry is owned by
root with mtime 0, so the same inputs give the same bytes (reproducible), and
device nodes need no privileges. Uncompressed on purpose: a compressed
initramfs costs 35-60 s of emulated decompression on a kvm_pvm host.
"""
import os
import stat
import sys


def header(ino, mode, nlink, size, major, minor, name):
    # c_ino c_mode c_uid c_gid c_nlink c_mtime c_filesize c_devmajor c_devminor
    # c_rdevmajor c_rdevminor c_namesize c_check
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, major, minor, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad(n):
    return b"\0" * ((4 - n % 4) % 4)


def entry(out, ino, name, mode, data=b"", major=0, minor=0):
    nlink = 2 if stat.S_ISDIR(mode) else 1
    h = header(ino, mode, nlink, len(data), major, minor, name) + name.encode() + b"\0"
    out.write(h + pad(len(h)))
    out.write(data + pad(len(data)))


def main(spec_path, out_path):
    out = open(out_path + ".tmp", "wb")
    ino = 721
    with open(spec_path) as spec:
        for lineno, line in enumerate(spec, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            kind, name = parts[0], parts[1].lstrip("/")
            try:
                if kind == "dir":
                    entry(out, ino, name, stat.S_IFDIR | int(parts[2], 8))
                elif kind == "file":
                    with open(parts[2], "rb") as f:
                        data = f.read()
                    entry(out, ino, name, stat.S_IFREG | int(parts[3], 8), data)
                elif kind == "nod":
                    t = stat.S_IFCHR if parts[3] == "c" else stat.S_IFBLK
                    entry(out, ino, name, t | int(parts[2], 8), b"", int(parts[4]), int(parts[5]))
                elif kind == "slink":
                    entry(out, ino, name, stat.S_IFLNK | int(parts[3], 8), parts[2].encode())
                else:
                    raise ValueError(f"unknown entry kind {kind!r}")
            except (IndexError, ValueError, OSError) as e:
                sys.exit(f"{spec_path}:{lineno}: {e}")
            ino += 1
    entry(out, 0, "TRAILER!!!", 0)
    out.close()
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: mkcpio.py SPEC OUT.cpio")
    main(sys.argv[1], sys.argv[2])
