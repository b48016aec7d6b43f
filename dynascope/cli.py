"""The `dynascope` command. Talks to the API over REST; starts the server and workers as processes."""

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from dynascope.client import DEFAULT_URL, ApiError, Client

app = typer.Typer(help="Dynascope: see how a neural network trains.", no_args_is_help=True)
console = Console()
TERMINAL = {"succeeded", "failed", "cancelled", "diverged", "lost"}
UrlOption = Annotated[str, typer.Option(envvar="DYNASCOPE_URL", help="the API's base URL")]
TokenOption = Annotated[str, typer.Option(envvar="DYNASCOPE_TOKEN", help="an API token (dashboard: Account → Tokens)", show_default=False)]
# The commands that run the server's parts, the extra each needs, and modules that extra brings.
SERVER_COMMANDS = {"serve": "server", "worker": "worker", "migrate": "server", "user": "server", "team": "server", "token": "server"}
EXTRA_MODULES = {
    "server": ("fastapi", "sqlalchemy", "alembic", "celery"),
    "worker": ("fastapi", "sqlalchemy", "celery", "torch", "sklearn"),
}


@app.callback()
def _needs_extras(ctx: typer.Context) -> None:
    """The library alone (`pip install .`) has the client commands; the server's need its extras."""
    if (extra := SERVER_COMMANDS.get(ctx.invoked_subcommand or "")) is not None:
        _require(extra, f"dynascope {ctx.invoked_subcommand}")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _require(extra: str, what: str) -> None:
    missing = [m for m in EXTRA_MODULES[extra] if not _importable(m)]
    if missing:
        console.print(
            f"`{what}` needs the {extra}'s parts: pip install 'dynascope[{extra}]' (missing: {', '.join(missing)})",
            style="red",
            markup=False,
        )
        raise typer.Exit(2)


def _worker_argv(concurrency: int, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.tasks",
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        "--pool=prefork",
        "-Q",
        "jobs",
        "-n",
        name,
        "--without-mingle",
        "--without-gossip",
    ]


def _stop_process_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM (warm), then SIGQUIT (cold: abandon the running job, it is requeued at next start), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default DYNASCOPE_HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default DYNASCOPE_PORT or 8000)")] = None,
    workers: Annotated[int, typer.Option(help="worker processes to start (0: none)")] = 1,
) -> None:
    """The API and dashboard with one worker. Without DYNASCOPE_BROKER_URL, an embedded Redis is started."""
    if workers:
        _require("worker", "dynascope serve --workers N (N > 0: training here)")
    import uvicorn

    from backend.config import get_settings
    from backend.migrate import upgrade_head

    settings = get_settings()
    upgrade_head()
    _bootstrap_admin_from_env()
    redis_server = None
    if not settings.broker_url:
        from backend.queue import start_embedded_broker

        redis_server = start_embedded_broker(Path(".dynascope"))
        os.environ["DYNASCOPE_BROKER_URL"] = f"redis+socket://{redis_server.socket_file}"
        get_settings.cache_clear()
    os.environ.setdefault("DYNASCOPE_TORCH_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))

    from backend import queue
    from backend.db import session_scope
    from backend.main import create_app
    from backend.services import analyses
    from backend.services.jobs import recover_after_restart

    if redis_server is not None:
        with session_scope() as session:
            pending = recover_after_restart(session)
            again = analyses.recover_after_restart(session)
        for job_id in pending:
            queue.enqueue_job(job_id)
        for resend in again:
            if resend.chunk is None:
                queue.enqueue_analysis(resend.analysis_id)
            else:
                queue.enqueue_grid_chunk(resend.analysis_id, resend.chunk)

    procs = [subprocess.Popen(_worker_argv(1, f"worker{i}@%h"), start_new_session=True, env=os.environ.copy()) for i in range(workers)]
    settings = get_settings()
    bind_host, bind_port = host or settings.host, port or settings.port
    console.print(f"[bold]Dynascope[/] at http://{bind_host}:{bind_port}  (Ctrl-C stops everything)")
    if settings.embedded:
        code = _local_login_code()
        console.print(f"sign in as the local user (once, within 15 minutes): http://{bind_host}:{bind_port}/#login={code}")
    # uvicorn shuts down on SIGTERM too, then raises the signal again: as Ctrl-C's, so that `kill`, `docker stop`
    # or systemd stop the worker and the embedded Redis below instead of leaving them running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        uvicorn.run(create_app(), host=bind_host, port=bind_port, log_level="info")
    finally:
        for proc in procs:
            _stop_process_group(proc, grace=3.0)
        if redis_server is not None:
            redis_server.shutdown()
        console.print("stopped: API, worker" + (", embedded Redis" if redis_server is not None else ""))


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="jobs at once (one per GPU is the rule)")] = 1,
    name: Annotated[str, typer.Option(help="Celery node name")] = "worker@%h",
) -> None:
    """A Celery worker for DYNASCOPE_BROKER_URL (the deployed mode: one per GPU)."""
    argv = _worker_argv(concurrency, name)
    os.execv(argv[0], argv)


@app.command()
def migrate() -> None:
    """Bring the database to the newest schema (alembic upgrade head); make the first admin from
    DYNASCOPE_ADMIN_USERNAME and DYNASCOPE_ADMIN_PASSWORD if there is no account yet."""
    from backend.migrate import upgrade_head

    upgrade_head()
    console.print("database at head")
    _bootstrap_admin_from_env()


def _bootstrap_admin_from_env() -> None:
    from backend.db import session_scope
    from backend.services import accounts

    username, password = os.environ.get("DYNASCOPE_ADMIN_USERNAME"), os.environ.get("DYNASCOPE_ADMIN_PASSWORD")
    if not (username and password):
        return
    with session_scope() as session:
        if not accounts.has_users(session):
            accounts.bootstrap_admin(session, username, password)
            console.print(f"made the first account: {escape(username)} (administrator, owner of team {accounts.DEFAULT_TEAM})")


LOCAL_USER = "local"


def _local_login_code() -> str:
    """Embedded mode: the local user (made on first start, an administrator) gets a one-time sign-in code."""
    from sqlalchemy import select

    from backend.config import get_settings
    from backend.db import session_scope
    from backend.models import User
    from backend.services import accounts

    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == LOCAL_USER))
        if user is None:
            user = accounts.bootstrap_admin(session, LOCAL_USER, None)
        return accounts.new_login_code(session, get_settings().secret_key.get_secret_value(), user)


users = typer.Typer(help="Accounts (run on the server: works on the database directly).", no_args_is_help=True)
teams = typer.Typer(help="Teams and their members (run on the server).", no_args_is_help=True)
tokens = typer.Typer(help="API tokens (run on the server; users make their own in the dashboard).", no_args_is_help=True)
app.add_typer(users, name="user")
app.add_typer(teams, name="team")
app.add_typer(tokens, name="token")
RoleOption = Annotated[str, typer.Option(help="owner, member or viewer")]


def _account_session():  # type: ignore[no-untyped-def]
    from backend.db import session_scope

    return session_scope()


def _lookup(session, model, column, value: str):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    row = session.scalar(select(model).where(column == value))
    if row is None:
        console.print(f"[red]no {model.__tablename__[:-1]} {escape(value)!r}[/]")
        raise typer.Exit(1)
    return row


@users.command("create")
def user_create(
    username: str,
    admin: Annotated[bool, typer.Option("--admin", help="may make accounts and teams, and set quotas")] = False,
    team: Annotated[str | None, typer.Option(help="add to this team (made if missing)")] = None,
    role: RoleOption = "owner",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin (else one is made and shown)")
    ] = False,
) -> None:
    """Make an account. The first account should be an administrator."""
    import secrets

    from backend.models import Role
    from backend.services import accounts

    password = sys.stdin.readline().rstrip("\n") if password_stdin else secrets.token_urlsafe(12)
    if len(password) < 8:
        console.print("[red]a password needs at least 8 characters[/]")
        raise typer.Exit(1)
    with _account_session() as session:
        try:
            user = accounts.create_user(session, username, password, admin=admin)
            if team:
                accounts.set_membership(session, user, accounts.get_or_create_team(session, team), Role(role))
        except accounts.AccountError as exc:
            console.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(1) from None
    console.print(f"account {escape(username)} made" + (f", {role} of team {escape(team)}" if team else ""))
    if not password_stdin:
        console.print(f"password (shown once): {password}")


@teams.command("create")
def team_create(name: str) -> None:
    from backend.services import accounts

    try:
        with _account_session() as session:
            accounts.get_or_create_team(session, name)
    except accounts.AccountError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    console.print(f"team {escape(name)} ready")


@teams.command("add")
def team_add(team: str, username: str, role: RoleOption = "member") -> None:
    """Add an account to a team, or change its role there."""
    from backend.models import Role, Team, User
    from backend.services import accounts

    with _account_session() as session:
        accounts.set_membership(
            session, _lookup(session, User, User.username, username), _lookup(session, Team, Team.name, team), Role(role)
        )
    console.print(f"{escape(username)} is {role} of {escape(team)}")


@tokens.command("create")
def token_create(
    username: str,
    team: Annotated[str, typer.Option(help="the team the token acts in")],
    name: Annotated[str, typer.Option(help="to tell tokens apart")] = "cli",
) -> None:
    """Make an API token for an account in one of its teams; prints it (only this once)."""
    from backend.config import get_settings
    from backend.models import Team, User
    from backend.services import accounts

    with _account_session() as session:
        user, team_row = _lookup(session, User, User.username, username), _lookup(session, Team, Team.name, team)
        if accounts.role_in(session, user.id, team_row.id) is None:
            console.print(f"[red]{escape(username)} is not in team {escape(team)}[/]")
            raise typer.Exit(1)
        _, secret = accounts.create_token(session, get_settings().secret_key.get_secret_value(), user, team_row.id, name)
    print(secret)


@users.command("login-code")
def login_code(username: str) -> None:
    """A one-time sign-in for the dashboard (15 minutes): open /#login=CODE."""
    from backend.config import get_settings
    from backend.models import User
    from backend.services import accounts

    with _account_session() as session:
        code = accounts.new_login_code(
            session, get_settings().secret_key.get_secret_value(), _lookup(session, User, User.username, username)
        )
    print(code)


def _fail(error: ApiError) -> NoReturn:
    console.print(f"[red]{escape(str(error))}[/]")
    raise typer.Exit(1)


WAIT_SECONDS = 2.0


def _watch(client: Client, job_id: int) -> dict:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(f"job {job_id}", total=1.0, stage="")
        waiting = False
        while True:
            try:
                job = client.job(job_id)
            except (ApiError, httpx.TransportError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500 and exc.status != 429:
                    raise
                # The server (or its database) is away for a while: the job goes on without us, so wait for it.
                reason = f"{exc.status}: {exc.detail}" if isinstance(exc, ApiError) else "the server is unreachable"
                if not waiting:
                    bar.console.print(f"job {job_id}: waiting for the server ({escape(reason)})")
                waiting = True
                bar.update(task, stage=f"waiting for the server ({reason})")
                time.sleep(WAIT_SECONDS)
                continue
            waiting = False
            bar.update(task, completed=job["progress"], stage=f"{job['status']}: {job['stage']}")
            if job["status"] in TERMINAL:
                return job
            time.sleep(0.5)


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a job spec, YAML or JSON")],
    watch: Annotated[bool, typer.Option("--watch", help="show a progress bar until the job ends")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """Submit a job spec (a spec with `sweep:` submits the whole grid)."""
    import yaml

    ctype = "application/json" if spec.suffix == ".json" else "application/yaml"
    text = spec.read_bytes()
    try:
        is_sweep = "sweep" in (yaml.safe_load(text) or {})
    except (yaml.YAMLError, TypeError):
        is_sweep = False  # the server says what is wrong with it
    with Client(url, token) as client:
        try:
            body = client.submit(text, ctype, sweep=is_sweep)
        except ApiError as error:
            _fail(error)
        jobs = body["jobs"] if is_sweep else [body]
        if is_sweep:
            console.print(f"sweep [bold]{body['id']}[/] ({escape(body['name'])}): {len(jobs)} jobs queued")
        for job in jobs:
            console.print(f"job [bold]{job['id']}[/] ({escape(job['name'])}) queued")
        if watch:
            failed = False
            for job in jobs:
                job = _watch(client, job["id"])
                color = "green" if job["status"] == "succeeded" else "red"
                console.print(f"job {job['id']} [{color}]{job['status']}[/]" + (f": {job['error']}" if job["error"] else ""))
                failed |= job["status"] != "succeeded"
            if failed:
                raise typer.Exit(1)


@app.command()
def jobs(
    status: Annotated[list[str] | None, typer.Option(help="only these states")] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="in the name")] = None,
    limit: int = 20,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """A table of recent jobs."""
    params: dict = {"limit": limit, "status": status or []}
    if search:
        params["q"] = search
    with Client(url, token) as client:
        try:
            page = client.jobs(**params)
        except ApiError as error:
            _fail(error)
    table = Table("id", "name", "source", "status", "progress", "duration", "created", title=f"{page['total']} jobs")
    for job in page["items"]:
        duration = f"{job['duration_s']:.1f}s" if job["duration_s"] is not None else ""
        cells = (job["source"], job["status"], f"{job['progress']:.0%}", duration, job["created_at"][:19])
        table.add_row(str(job["id"]), escape(job["name"]), *cells)
    console.print(table)


@app.command()
def cancel(job_id: int, url: UrlOption = DEFAULT_URL, token: TokenOption = "") -> None:
    """Cancel a job (a running one stops at its next step; a tracked run when its tracker next beats)."""
    with Client(url, token) as client:
        try:
            job = client.cancel(job_id)
        except ApiError as error:
            _fail(error)
    console.print(f"job {job_id}: {job['status']}" + (" (stopping)" if job["cancel_requested"] else ""))


@app.command()
def export(
    out: Annotated[Path, typer.Argument(dir_okay=False, help="the file to write (.parquet or .csv: the format, unless --format)")],
    ids: Annotated[str | None, typer.Option(help="comma-separated job ids")] = None,
    sweep: Annotated[int | None, typer.Option(help="the jobs of this sweep")] = None,
    status: Annotated[list[str] | None, typer.Option(help="only these states")] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="in the name")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="only jobs with every one of these tags")] = None,
    names: Annotated[str | None, typer.Option(help="comma-separated series names (default: all)")] = None,
    prefix: Annotated[str | None, typer.Option(help="only series whose names start so")] = None,
    fields: Annotated[str | None, typer.Option(help="spec fields as columns (default: those that differ)")] = None,
    format: Annotated[str | None, typer.Option("--format", help="parquet or csv (default: by the file's suffix)")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """Many jobs' series as one long table (job_id, job_name, spec fields, series, step, value), streamed to a file."""
    chosen = format or ("csv" if out.suffix == ".csv" else "parquet")
    selection = {
        "ids": ids,
        "sweep_id": sweep,
        "status": status,
        "q": search,
        "tag": tag,
        "names": names,
        "prefix": prefix,
        "fields": fields,
    }
    partial = out.with_name(out.name + ".part")
    with (
        Client(url, token) as client,
        Progress(
            TextColumn(f"export to {escape(out.name)}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar,
    ):
        task = bar.add_task("", total=None)
        try:
            with partial.open("wb") as into:
                rows, jobs = client.export(into, format=chosen, on_bytes=lambda n: bar.advance(task, n), **selection)
        except ApiError as error:
            partial.unlink(missing_ok=True)
            _fail(error)
        partial.replace(out)
    console.print(f"{escape(str(out))}: {rows:,} rows of {jobs} job{'s' if jobs != 1 else ''} ({chosen})")


@app.command()
def sync(
    dirs: Annotated[list[Path], typer.Argument(exists=True, file_okay=False, help="run directories (each holds a run.json)")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """Send tracked runs kept on disk (offline, or while the server was away); a repeated sync sends nothing twice."""
    import httpx

    from dynascope.spill import Spill
    from dynascope.tracker import drain
    from dynascope.tracking import RunCreate

    with Client(url, token) as client:
        for root in dirs:
            spill = Spill(root)
            meta = spill.run()
            try:
                run_id = meta["server_id"] if meta["server_id"] is not None and meta["url"] == client.url else None
                if run_id is None:
                    run_id = client.create_run(RunCreate.model_validate(meta["create"]))["id"]
                    spill.set_server_id(run_id, client.url)
                records = sum(len(spill.records(s)) for s in spill.segments())
                with Progress(
                    TextColumn(f"run {run_id}"), BarColumn(), TextColumn("{task.completed}/{task.total} records"), console=console
                ) as bar:
                    task = bar.add_task("", total=records)
                    if not drain(client, run_id, spill, lambda n: bar.advance(task, n)):
                        console.print(f"[red]{escape(client.url)} stopped answering: run again to send the rest")
                        raise typer.Exit(1)
                if (end := spill.end()) is not None:
                    client.finish(run_id, end)
                    spill.mark_finished()
            except ApiError as error:
                _fail(error)
            except httpx.TransportError as exc:
                console.print(f"[red]{escape(client.url)} is not reachable ({escape(str(exc))}): run again later")
                raise typer.Exit(1) from None
            console.print(f"{escape(str(root))} → job [bold]{run_id}[/] ({escape(meta['create']['name'])})")


if __name__ == "__main__":
    app()
