"""A throwaway S3 endpoint for running the integration suite on object storage.

Uses the npm package `s3rver` (a pinned version installed by `make setup` into .k2-tools/node_modules); it listens on
127.0.0.1 on a free port, keeps its objects in a temporary folder, and is stopped at the end of the session. It is
started through a few lines of JavaScript rather than its CLI to give it a key pair made for this session: s3rver
rejects an unknown access key id (InvalidAccessKeyId), so a passing test proves the configured key reached every
client, and the secret is a string no log could contain by accident (tests grep for it). s3rver 3.7 does not verify
SigV4 signatures themselves. Path-style URLs only (endpoint/bucket/key).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path

from pyarrow.fs import S3FileSystem

from k2.lake.catalog import use_compatible_s3_checksums
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
S3RVER = Path(os.environ.get("K2_S3RVER", REPO / ".k2-tools" / "node_modules" / "s3rver"))
INSTALL_HINT = "npm install --prefix .k2-tools --no-save s3rver@3.7.1 (make setup does it)"
REGION = "us-east-1"

# s3rver 3.7's accounts live in lib/models/account.js; its CLI only knows the built-in S3RVER/S3RVER pair.
# s3rver also ignores If-Match / If-None-Match on PUT, which AWS S3 (since 2024) and MinIO honour and Tansu's s3://
# storage relies on: without them a restarted broker's first produce overwrites its log from offset 0 (seen here).
# The middleware gives PUT those semantics (412 PreconditionFailed), one writer per key at a time.
_LAUNCHER = """
const [root, address, port, directory, keyId, secret] = process.argv.slice(1);
const S3rver = require(root);
const account = require(root + '/lib/models/account').DUMMY_ACCOUNT;
account.revokeAccessKey('S3RVER');
account.createKeyPair(keyId, secret);
const server = new S3rver({ address, port: Number(port), directory, silent: true, vhostBuckets: false });
const unquote = (tag) => (tag || '').trim().replace(/^W\\//, '').replace(/^"|"$/g, '');
const locks = new Map();
async function conditionalPut(ctx, next) {
  const ifNoneMatch = ctx.get('if-none-match');
  const ifMatch = ctx.get('if-match');
  if (ctx.method !== 'PUT' || (!ifNoneMatch && !ifMatch)) return next();
  const [, bucket, ...rest] = ctx.path.split('/');
  const key = decodeURIComponent(rest.join('/'));
  const id = bucket + '/' + key;
  const previous = locks.get(id) || Promise.resolve();
  let release;
  const gate = new Promise((resolve) => { release = resolve; });
  const mine = previous.then(() => gate);
  locks.set(id, mine);
  await previous;
  try {
    let current = null;
    try {
      current = await server.store.getMetadata(bucket, key);
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
    }
    const etag = current ? unquote(current.etag) : null;
    const failed = (ifNoneMatch === '*' && current) ||
      (ifMatch && (!current || (ifMatch !== '*' && unquote(ifMatch) !== etag)));
    if (failed) {
      ctx.status = 412;
      ctx.type = 'application/xml';
      ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\\n<Error><Code>PreconditionFailed</Code>' +
        '<Message>At least one of the pre-conditions you specified did not hold</Message></Error>';
      return;
    }
    await next();
  } finally {
    release();
    if (locks.get(id) === mine) locks.delete(id);
  }
}
server.middleware.unshift(conditionalPut);
server.run((err) => { if (err) { console.error(err); process.exit(1); } console.log('listening'); });
process.on('SIGTERM', () => server.close(() => process.exit(0)));
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.access_key_id = f"K2TEST{secrets.token_hex(6).upper()}"
        self.secret_access_key = f"k2-test-secret-{secrets.token_hex(12)}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> S3Server:
        node = shutil.which("node")
        if not (S3RVER / "package.json").exists() or node is None:
            raise RuntimeError(f"s3rver (and node) not found at {S3RVER}: {INSTALL_HINT}")
        version = json.loads((S3RVER / "package.json").read_text())["version"]
        if version != "3.7.1":
            raise RuntimeError(f"s3rver {version} at {S3RVER}, tests are written for 3.7.1: {INSTALL_HINT}")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        args = [str(S3RVER), "127.0.0.1", str(self.port), str(self.root / "data")]
        cmd = [node, "-e", _LAUNCHER, *args, self.access_key_id, self.secret_access_key]
        log = open(self.root / "s3rver.log", "ab")  # noqa: SIM115 - the child keeps writing to it
        # start_new_session: a stop ends node and anything it spawned, and only those.
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        def running() -> None:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"s3rver exited with {self._proc.returncode}; see {self.root / 's3rver.log'}")

        try:
            wait_until(listening, timeout, f"s3rver to listen on {self.endpoint}", interval=0.05, check=running)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def filesystem(self) -> S3FileSystem:
        """A pyarrow client of this endpoint (what pyiceberg's FileIO uses), for creating buckets and checking."""
        use_compatible_s3_checksums()
        return S3FileSystem(
            endpoint_override=self.endpoint,
            access_key=self.access_key_id,
            secret_key=self.secret_access_key,
            region=REGION,
            force_virtual_addressing=False,
            allow_bucket_creation=True,
        )

    def create_bucket(self, prefix: str = "k2") -> str:
        """A fresh bucket per test; returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return name

    def env(self) -> dict[str, str]:
        """The K2_S3_* settings pointing K2 at this endpoint."""
        return {
            "K2_S3_ENDPOINT": self.endpoint,
            "K2_S3_ACCESS_KEY_ID": self.access_key_id,
            "K2_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "K2_S3_REGION": REGION,
        }
