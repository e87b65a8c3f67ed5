"""The web client's files, which the route serves at /app: HTML, CSS, ES modules and the vendor
files built from npm packages by web/build.sh (committed, so nothing is fetched at run time)."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
PROTO_FILE = Path(__file__).parent.parent / "proto" / "cim.proto"  # parsed by the page (protobuf.js)
