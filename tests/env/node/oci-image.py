#!/usr/bin/env python3
"""Writes a single-layer OCI image layout tarball without a container engine.

    oci-image.py OUT.tar NAME:TAG --file SRC:DEST[:MODE] ... --entrypoint /bin/x [--user 65532:65532]
        [--dir DEST[:MODE[:UID:GID]]] [--symlink DEST:TARGET] [--label K=V] [--expose 8080/tcp]
        [--cmd ARG] [--env K=V]

Files are read through symlinks (the layer holds their contents) and owned by 0:0; parent
directories are added as 0755 root, --dir sets a directory's own mode and owner (e.g.
/tmp:1777), --symlink adds a symbolic link (TARGET as written, e.g. busybox).
Repeat --entrypoint/--cmd for each argument; one that starts with - is written --cmd=--config.

The archive holds oci-layout, index.json and blobs/sha256/*; `ctr images import` reads it
and names the image after the io.containerd.image.name annotation. Everything is written
with fixed timestamps and owners, so the same inputs give the same image digest.
"""
import argparse
import hashlib
import io
import json
import os
import tarfile


def tar_bytes(entries):
    """entries: (name, data, mode[, uid, gid]) sorted; directories have data None,
    symbolic links a str data (the link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode, *owner in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid, info.gid = owner or (0, 0)
            info.uname = info.gname = ""
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type = tarfile.SYMTYPE
                info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def blob(blobs, media_type, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("name", help="full image name, e.g. vaultsync.local/pause:v1")
    ap.add_argument("--file", action="append", default=[], help="SRC:DEST[:MODE]")
    ap.add_argument("--entrypoint", action="append", default=[])
    ap.add_argument("--cmd", action="append", default=[])
    ap.add_argument("--user", default="")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--dir", action="append", default=[], help="DEST[:MODE[:UID:GID]]")
    ap.add_argument("--symlink", action="append", default=[], help="DEST:TARGET")
    ap.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    ap.add_argument("--expose", action="append", default=[], help="PORT/PROTO, e.g. 8080/tcp")
    args = ap.parse_args()

    files, dirs = {}, {}  # path -> (data, mode); path -> (mode, uid, gid)

    def add_parents(dest):
        d = os.path.dirname(dest)
        while d:
            dirs.setdefault(d, (0o755, 0, 0))
            d = os.path.dirname(d)

    for spec in args.file:
        parts = spec.split(":")
        src, dest = parts[0], parts[1].lstrip("/")
        mode = int(parts[2], 8) if len(parts) > 2 else 0o755
        with open(src, "rb") as f:
            files[dest] = (f.read(), mode)
        add_parents(dest)
    for spec in args.symlink:
        dest, target = spec.split(":", 1)
        files[dest.lstrip("/")] = (target, 0o777)
        add_parents(dest.lstrip("/"))
    for spec in args.dir:
        parts = spec.split(":")
        dest = parts[0].strip("/")
        mode = int(parts[1], 8) if len(parts) > 1 else 0o755
        uid, gid = (int(parts[2]), int(parts[3])) if len(parts) > 3 else (0, 0)
        dirs[dest] = (mode, uid, gid)
        add_parents(dest)
    clash = sorted(set(files) & set(dirs))
    if clash:
        ap.error("both a directory and a file or link: " + ", ".join(clash))
    entries = [(d + "/", None, mode, uid, gid) for d, (mode, uid, gid) in dirs.items()]
    entries += [(name, data, mode) for name, (data, mode) in files.items()]
    layer = tar_bytes(sorted(entries, key=lambda e: e[0]))

    blobs = {}
    layer_desc = blob(blobs, "application/vnd.oci.image.layer.v1.tar", layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": args.entrypoint or None,
            "Cmd": args.cmd or None,
            "User": args.user,
            "Env": args.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            "Labels": dict(kv.split("=", 1) for kv in args.label) or None,
            "ExposedPorts": {p: {} for p in args.expose} or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "tests/env/node/oci-image.py"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v not in (None, "")}
    config_desc = blob(blobs, "application/vnd.oci.image.config.v1+json",
                       json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = blob(blobs, "application/vnd.oci.image.manifest.v1+json",
                         json.dumps(manifest, sort_keys=True).encode())
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {"io.containerd.image.name": args.name,
                                    "org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}

    out = [("blobs/", None, 0o755), ("blobs/sha256/", None, 0o755),
           ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), 0o644),
           ("index.json", json.dumps(index, sort_keys=True).encode(), 0o644)]
    out += [("blobs/sha256/" + d.split(":", 1)[1], data, 0o644) for d, data in sorted(blobs.items())]
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(tar_bytes(out))
    os.replace(tmp, args.out)
    print(manifest_desc["digest"])


if __name__ == "__main__":
    main()
