#!/bin/sh
# Build the web client's vendor files from npm packages (package-lock.json pins them) into
# cim/web/static/vendor/, which is committed: `pip install .` serves the client with no npm and no CDN.
# Run from anywhere: sh web/build.sh (or: cd web && npm run build).
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
vendor=../cim/web/static/vendor
rm -rf "$vendor"
mkdir -p "$vendor"
# protobuf.js (full build: it parses cim.proto, which the route serves at /app/cim.proto, so the
# page always speaks the schema of the server it came from) and long.js (exact 64-bit msgIds).
cp node_modules/protobufjs/dist/protobuf.min.js "$vendor/protobuf.min.js"
cp node_modules/protobufjs/LICENSE "$vendor/protobuf.LICENSE"
cp node_modules/long/umd/index.js "$vendor/long.js"
cp node_modules/long/LICENSE "$vendor/long.LICENSE"
echo "built $(ls "$vendor" | tr '\n' ' ')in cim/web/static/vendor"
