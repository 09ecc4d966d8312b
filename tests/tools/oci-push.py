#!/usr/bin/env python3
"""Push one file to an OCI registry as an artifact (with oras, the PyPI package), or delete a
blob from a repository, for the model-pull tests. Plain HTTP only (the test registries that
scripts/lib.sh's ensure_registry starts).

Push:
    oci-push.py --registry 127.0.0.1:5000 --repo models/minilm --tag v1 --file model.onnx \
        [--username U --password P] [--media-type application/vnd.onnx.model]
prints one line of JSON on stdout:
    {"reference": "127.0.0.1:5000/models/minilm:v1", "manifest_digest": "sha256:...",
     "layer_digest": "sha256:...", "size": N}
The manifest is what an oras push makes: an OCI image manifest (config: the empty "{}" blob
of type application/vnd.unknown.config.v1+json) with exactly one layer, the file's bytes, of
--media-type (default application/vnd.oci.image.layer.v1.tar, as `oras push` gives) and
annotated org.opencontainers.image.title = the file's name. After the push the manifest is
read back over HTTP and checked: one layer, whose digest is the file's sha256 and size its
size.

Delete a blob (to play a missing blob):
    oci-push.py --registry 127.0.0.1:5000 --repo models/minilm --delete-blob sha256:... \
        [--username U --password P]
prints {"deleted": "sha256:...", "repo": "...", "status": 202}.

Exit status 0 on success, 1 with a one-line error on stderr otherwise (unreachable registry,
rejected credentials, failed push or delete, digest mismatch), 2 for bad arguments.

The oras package lives in the venv that scripts/lib.sh's ensure_oras makes
($EDGEFLEET_TOOLS/oras-venv); run with any other python3, the script re-executes itself there.
"""

import argparse
import hashlib
import json
import os
import sys

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
DEFAULT_LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def venv_python():
    tools = os.environ.get("EDGEFLEET_TOOLS")
    if not tools:
        cache = os.environ.get("EDGEFLEET_CACHE") or os.path.expanduser("~/.cache/edgefleet")
        tools = os.path.join(cache, "tools")
    return os.path.join(tools, "oras-venv", "bin", "python")


def ensure_oras_importable():
    try:
        import oras.provider  # noqa: F401
        return
    except ImportError:
        pass
    py = venv_python()
    if os.path.exists(py) and os.path.realpath(sys.prefix) != os.path.realpath(
            os.path.dirname(os.path.dirname(py))):
        os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])
    fail(f"the oras package is not installed (looked in {py}); "
         "run: . scripts/lib.sh && ensure_oras")


def fail(msg):
    print(f"oci-push: error: {msg}", file=sys.stderr)
    sys.exit(1)


def file_sha256(path):
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def registry_errors(resp):
    try:
        errs = resp.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs) or resp.text.strip()
    except ValueError:
        return resp.text.strip()[:200]


def check_access(session, base, args):
    """GET /v2/ first: fail fast and clearly (oras itself retries for a minute and more)."""
    import requests
    try:
        resp = session.get(f"{base}/v2/", timeout=10)
    except requests.RequestException as e:
        fail(f"cannot reach the registry at {base}: {e}")
    if resp.status_code == 401:
        if args.username is not None:
            fail(f"the registry at {base} rejected the credentials of user "
                 f"{args.username!r} (HTTP 401)")
        fail(f"the registry at {base} requires credentials (HTTP 401): "
             "pass --username and --password")
    if resp.status_code != 200:
        fail(f"the registry at {base} answered GET /v2/ with HTTP {resp.status_code}: "
             f"{registry_errors(resp)}")


def push(args, session, base):
    import oras.provider
    from oras.logger import setup_logger

    setup_logger(quiet=True, nocolor=True)
    if not os.path.isfile(args.file):
        fail(f"no such file: {args.file}")
    path = os.path.abspath(args.file)
    want_digest, want_size = file_sha256(path)
    reference = f"{args.registry}/{args.repo}:{args.tag}"

    client = oras.provider.Registry(hostname=args.registry, insecure=True, auth_backend="basic")
    if args.username is not None:
        client.auth.set_basic_auth(args.username, args.password)
    # Credentials come from the command line only, never from a Docker config file.
    client.auth.load_configs = lambda *a, **k: None
    try:
        # "<path>:<media type>" is how oras takes a layer's media type.
        client.push(target=reference, files=[f"{path}:{args.media_type}"],
                    disable_path_validation=True, quiet=True)
    except Exception as e:  # oras raises ValueError & co. with the registry's reason
        fail(f"push of {args.file} to {reference} failed: {e}")

    resp = session.get(f"{base}/v2/{args.repo}/manifests/{args.tag}",
                       headers={"Accept": MANIFEST_TYPE}, timeout=30)
    if resp.status_code != 200:
        fail(f"reading back the manifest of {reference}: HTTP {resp.status_code}: "
             f"{registry_errors(resp)}")
    manifest_digest = resp.headers.get("Docker-Content-Digest")
    body_digest = "sha256:" + hashlib.sha256(resp.content).hexdigest()
    if manifest_digest is None:
        manifest_digest = body_digest
    elif manifest_digest != body_digest:
        fail(f"manifest of {reference}: Docker-Content-Digest {manifest_digest} "
             f"but its bytes hash to {body_digest}")
    manifest = resp.json()
    if manifest.get("mediaType") != MANIFEST_TYPE or manifest.get("schemaVersion") != 2:
        fail(f"manifest of {reference} is not an OCI image manifest: {manifest}")
    layers = manifest.get("layers") or []
    if len(layers) != 1:
        fail(f"manifest of {reference} has {len(layers)} layers, not 1")
    layer = layers[0]
    if layer.get("digest") != want_digest or layer.get("size") != want_size:
        fail(f"manifest of {reference}: layer {layer.get('digest')} ({layer.get('size')} bytes) "
             f"but the file is {want_digest} ({want_size} bytes)")
    print(json.dumps({"reference": reference, "manifest_digest": manifest_digest,
                      "layer_digest": layer["digest"], "size": layer["size"]}))


def delete_blob(args, session, base):
    digest = args.delete_blob
    resp = session.delete(f"{base}/v2/{args.repo}/blobs/{digest}", timeout=30)
    if resp.status_code != 202:
        fail(f"DELETE of blob {digest} in {args.registry}/{args.repo}: HTTP {resp.status_code}: "
             f"{registry_errors(resp)}")
    print(json.dumps({"deleted": digest, "repo": args.repo, "status": resp.status_code}))


def main():
    p = argparse.ArgumentParser(description="Push a file as an OCI artifact, or delete a blob.")
    p.add_argument("--registry", required=True, help="host:port, plain HTTP")
    p.add_argument("--repo", required=True, help="repository, e.g. models/minilm")
    p.add_argument("--tag", help="tag to push (push mode)")
    p.add_argument("--file", help="the file to push as the one layer (push mode)")
    p.add_argument("--media-type", default=DEFAULT_LAYER_TYPE, help="the layer's media type")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--delete-blob", metavar="DIGEST", help="delete this blob from --repo instead")
    args = p.parse_args()
    if (args.username is None) != (args.password is None):
        p.error("--username and --password go together")
    if args.delete_blob:
        if args.tag or args.file:
            p.error("--delete-blob takes no --tag or --file")
        if not args.delete_blob.startswith("sha256:"):
            p.error("--delete-blob wants a digest, sha256:<hex>")
    elif not (args.tag and args.file):
        p.error("a push needs --tag and --file (or use --delete-blob)")

    ensure_oras_importable()
    import requests

    session = requests.Session()
    if args.username is not None:
        session.auth = (args.username, args.password)
    base = f"http://{args.registry}"
    check_access(session, base, args)
    if args.delete_blob:
        delete_blob(args, session, base)
    else:
        push(args, session, base)


if __name__ == "__main__":
    main()
