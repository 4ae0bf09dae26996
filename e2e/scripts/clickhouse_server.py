"""The ClickHouse engine of chdb-core (clickhouse-local) serving HTTP and native TCP on
127.0.0.1 as a local server; production runs the `clickhouse-server` program instead.

Started through the `clickhouse-server` wrapper next to this file, which puts
the pinned chdb-core from the cache on PYTHONPATH:

    clickhouse-server --data-dir DIR [--http-port 8123] [--tcp-port 9000]

How it works: chdb's module-level `_chdb.query(sql, fmt, path=DIR)` runs the
whole clickhouse-local program on DIR. clickhouse-local reads ./config.xml from
the working directory, so the launcher writes config.xml and users.xml into
DIR/launcher/, changes into it, and runs one query that starts the HTTP and
native TCP listeners and then keeps running (one row per second from
system.numbers) so they stay up. The listeners live exactly as long as that
query.

Behaviour:
  * foreground; listens on 127.0.0.1 only; data persists in DIR;
  * with TALLY_CLICKHOUSE_PASSWORD set, there is a user `tally` with that password
    (users.xml holds its SHA-256), on HTTP and native TCP alike; `default` stays
    passwordless on loopback, since clickhouse-local runs the server's own session as it;
  * prints "clickhouse-server: ready ..." on stderr once /ping answers;
  * SIGTERM or SIGINT: cancels the keep-alive query and exits 0 within about
    a second;
  * any startup failure (port taken, DIR locked by another server, bad
    install) exits non-zero with the reason on stderr;
  * if the keep-alive query ends by itself (for example a blanket KILL QUERY),
    the server is gone and the launcher exits 1.

The keep-alive query is visible in system.processes: never run a blanket
`KILL QUERY` against this server.
"""

import argparse
import hashlib
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from xml.sax.saxutils import escape

PROG = "clickhouse-server"
# The password of the `default` user (none when unset): from the environment, so it is not
# on the command line; users.xml keeps its SHA-256 only.
PASSWORD = os.environ.get("TALLY_CLICKHOUSE_PASSWORD", "")
# With a password, clients log in as this user; `default` is then the server's own.
USER = "tally"
# Marks the keep-alive query so that shutdown can cancel exactly that one.
KEEPALIVE_MARK = "tally_launcher_keepalive"
KEEPALIVE_SQL = (
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    f"SELECT sleepEachRow(1) AS {KEEPALIVE_MARK} FROM system.numbers "
    "SETTINGS max_block_size = 1, function_sleep_max_microseconds_per_block = 0, "
    "max_execution_time = 0"
)
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 5.0

CONFIG_XML = """<clickhouse>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <users_config>{users}</users_config>
    <logger>
        <level>warning</level>
        <console>1</console>
    </logger>
</clickhouse>
"""

# The default profile makes HTTP behave like a normal server: no implicit
# SELECT for bare expressions, TabSeparated unless a FORMAT is given, and
# synchronous inserts (chdb turns async_insert on, but clickhouse-local has no
# async insert queue, so it would only change the semantics in odd ways).
USERS_XML = """<clickhouse>
    <profiles>
        <default>
            <implicit_select>0</implicit_select>
            <default_format>TabSeparated</default_format>
            <async_insert>0</async_insert>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                {default_networks}
            </networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>1</access_management>
        </default>{tally_user}
    </users>
    <quotas>
        <default></default>
    </quotas>
</clickhouse>
"""


def say(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def port(text):
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the ClickHouse engine of chdb-core as a local server on 127.0.0.1 "
        "in the foreground. Ready when GET http://127.0.0.1:HTTP_PORT/ping answers "
        "'Ok.'. SIGTERM/SIGINT stop it with exit code 0.",
    )
    parser.add_argument("--data-dir", required=True, help="data directory (created if missing; kept across restarts)")
    parser.add_argument("--http-port", type=port, default=8123, help="HTTP interface port (default 8123)")
    parser.add_argument("--tcp-port", type=port, default=9000, help="native TCP interface port (default 9000)")
    return parser.parse_args(argv)


def http(port_, sql, timeout):
    """Runs one statement over the HTTP interface (as `default`) and returns the body."""
    req = urllib.request.Request(f"http://127.0.0.1:{port_}/", data=sql.encode(), method="POST")
    if PASSWORD:
        req.add_header("X-ClickHouse-User", USER)
        req.add_header("X-ClickHouse-Key", PASSWORD)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


def ping(port_):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port_}/ping", timeout=1) as resp:
            return resp.read().strip() == b"Ok."
    except (OSError, urllib.error.URLError):
        return False


def port_taken(port_):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port_))
        except OSError:
            return True
    return False


def main(argv):
    args = parse_args(argv)
    if args.http_port == args.tcp_port:
        say("--http-port and --tcp-port must differ")
        return 2
    data_dir = os.path.abspath(args.data_dir)
    run_dir = os.path.join(data_dir, "launcher")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        say(f"cannot create data directory {data_dir}: {e}")
        return 1
    # ClickHouse's own error for a taken port is buried in a long message;
    # check first so the common mistake gets a plain answer.
    for name, p in (("HTTP", args.http_port), ("TCP", args.tcp_port)):
        if port_taken(p):
            say(f"{name} port 127.0.0.1:{p} is already in use")
            return 1

    users_path = os.path.join(run_dir, "users.xml")
    with open(users_path, "w") as f:
        loopback = "<ip>127.0.0.1</ip><ip>::1</ip>"
        # The server's own session runs as `default`, which clickhouse-local checks like a
        # client: it stays passwordless on loopback.
        networks = loopback
        if PASSWORD:
            user = (
                f"\n        <{USER}>"
                f"<password_sha256_hex>{hashlib.sha256(PASSWORD.encode()).hexdigest()}</password_sha256_hex>"
                f"<networks>{loopback}</networks><profile>default</profile><quota>default</quota>"
                f"<access_management>1</access_management></{USER}>"
            )
        else:
            user = ""
        f.write(USERS_XML.replace("{default_networks}", networks).replace("{tally_user}", user))
    with open(os.path.join(run_dir, "config.xml"), "w") as f:
        f.write(CONFIG_XML.format(http_port=args.http_port, tcp_port=args.tcp_port, users=escape(users_path)))

    # SIGTERM/SIGINT only set a flag; the main thread acts on it. The engine
    # installs handlers of its own while it starts, so ours are installed again
    # on every startup poll and once more when the server is up.
    stop = threading.Event()
    stop_signal = {}

    def on_signal(signum, _frame):
        stop_signal.setdefault("name", signal.Signals(signum).name)
        stop.set()

    def take_signals():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    take_signals()

    try:
        import chdb  # the wrapper puts the pinned chdb-core on PYTHONPATH
    except ImportError as e:
        say(f"cannot load chdb-core ({e}); run e2e/scripts/install-servers.sh")
        return 1
    if stop.is_set():
        return 0

    outcome = {}
    finished = threading.Event()

    def serve():
        try:
            result = chdb._chdb.query(KEEPALIVE_SQL, "TabSeparated", path=data_dir)
            # The engine prints its own errors on stderr; the result object
            # rarely carries them, but use it when it does.
            if result is not None and result.has_error():
                outcome["error"] = result.error_message()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = e
        finally:
            finished.set()

    def exit_now(code):
        # Skip interpreter teardown: the engine's static destructors are slow
        # and not needed, every insert is already on disk.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # clickhouse-local reads ./config.xml; the cwd is also where relative paths land.
    os.chdir(run_dir)
    worker = threading.Thread(target=serve, name="clickhouse", daemon=True)
    worker.start()

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ping(args.http_port):
        take_signals()
        if finished.wait(0.1):
            if stop.is_set():
                exit_now(0)
            error = outcome.get("error")
            reason = str(error).strip() if error else "see the ClickHouse error above"
            say(f"failed to start (data {data_dir}, http {args.http_port}, tcp {args.tcp_port}): {reason}")
            exit_now(1)
        if time.monotonic() > deadline:
            say(f"not ready after {STARTUP_TIMEOUT_S:.0f}s")
            exit_now(1)
    take_signals()
    if not stop.is_set():
        say(f"ready: http://127.0.0.1:{args.http_port} tcp 127.0.0.1:{args.tcp_port} data {data_dir}")

    while not stop.is_set():
        if finished.wait(0.2):
            error = outcome.get("error")
            say(f"server query ended unexpectedly: {str(error).strip() if error else 'no error'}")
            exit_now(1)

    say(f"{stop_signal.get('name', 'signal')} received, stopping")
    try:
        http(
            args.http_port,
            f"KILL QUERY WHERE query LIKE '%{KEEPALIVE_MARK} FROM system.numbers%' "
            "AND query_id != queryID() ASYNC",
            timeout=2,
        )
    except urllib.error.HTTPError as e:
        say(f"cancelling the keep-alive query failed: {e.read().decode(errors='replace').strip()}")
    except (OSError, urllib.error.URLError) as e:
        say(f"cancelling the keep-alive query failed: {e}")
    if not finished.wait(SHUTDOWN_TIMEOUT_S):
        say("keep-alive query did not stop in time; exiting anyway")
    exit_now(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
