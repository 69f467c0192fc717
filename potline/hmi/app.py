"""The web HMI: an aiohttp application served from the caller's event loop.

Why aiohttp: it is asyncio-native (``AppRunner`` + ``TCPSite`` run inside the daemon's
own loop: no thread, no second loop, no WSGI bridge), it has streaming responses for
server-sent events and a websocket server built in, it is small, typed and long
maintained, and its client doubles as the test and DevTools driver. No template engine
and no front-end build: one static page (``static/index.html``), plain JS and CSS, and
uPlot (MIT, vendored under ``static/vendor/uplot``) for the trends. Nothing is loaded
from the network: the plant may be air-gapped.

Routes (JSON unless said)::

    GET  /                       the single-page app (static/index.html)
    GET  /static/...             its assets
    GET  /api/session            who am I (user, role, CSRF token)
    POST /api/login              {"user", "password"} -> session cookie
    POST /api/logout
    GET  /api/plant              lines, rooms, cells
    GET  /api/snapshot           the latest scan
    GET  /api/stream             server-sent events: "snapshot" every scan (at most every
                                 push_interval_s), "alarms" when the alarm list changed
    GET  /api/alarms[?all=1]     the alarm list
    POST /api/alarms/ack         {"key", "comment"}                operators
    POST /api/alarms/shelve      {"key", "reason", "duration_s"}   operators
    POST /api/alarms/unshelve    {"key"}                           operators
    POST /api/mode               {"mode", "reason"}                operators
    POST /api/samples            {"room", "cell", "alf3_excess_wt_pct", "bath_temp_c",
                                  "alumina_wt_pct", "time", "comment"}   operators
    GET  /api/history            ?tag=&start=&end=&points=  (Unix s)
    GET  /api/history/group      ?group=&start=&end=&points=
    GET  /api/journal            ?category=&kind=&room=&cell=&since=&until=&limit=
    GET  /api/ae                 ?limit=   anode effects (journal starts/ends paired)

Security: the same users, roles and scrypt hashes as the OPC UA mirror (``auth``);
changes need an operator's session, its CSRF token in ``X-CSRF-Token`` and a same-origin
request (``Origin``); the cookie is HttpOnly and SameSite=Strict; logins take JSON only
(no cross-site form posts); every page carries a strict Content-Security-Policy.

Live updates never hold the control loop: ``notify()`` only sets a flag; one pump task
builds each message once per push and hands it to every client, keeping only the
newest message of each kind for a slow client (nothing queues up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
from aiohttp import web
from pydantic import Field

from potline.alarms import AlarmActionError
from potline.hmi.auth import Auth, Session
from potline.hmi.listener import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, CappedAppRunner
from potline.hmi.source import HmiSource, JournalQuery, plant_info
from potline.operator_inputs import OperatorInputError
from twin.configcore import StrictModel

if TYPE_CHECKING:
    from plc_bridge.opcua_security import LoginPolicy, UserEntry

__all__ = ["HmiConfig", "HmiServer", "static_dir"]

log = structlog.get_logger("potline.hmi")

COOKIE = "potline_session"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")  # fmt: skip
KEEPALIVE_S = 15.0


def static_dir() -> Path:
    """The packaged static files (index.html, app.js, app.css, vendor/uplot)."""
    return Path(str(resources.files("potline.hmi") / "static"))


class HmiConfig(StrictModel):
    """The web HMI (an ``[hmi]`` TOML table)."""

    enabled: bool = Field(True, description="serve the HMI")
    host: str = Field("127.0.0.1", description="interface to bind (the plant network needs its own address)")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free one)")
    anonymous: Literal["read_only", "refuse"] | None = Field(
        None, description="without a login: look only, or nothing (None: as the OPC UA mirror's security says)"
    )
    session_idle_s: float = Field(8 * 3600.0, gt=0.0, le=7 * 86400.0, description="session idle timeout [s]",
                                  json_schema_extra={"unit": "s"})  # fmt: skip
    cookie_secure: bool = Field(False, description="mark the session cookie Secure (behind TLS)")
    push_interval_s: float = Field(0.5, ge=0.02, le=60.0, description="least wall time between two pushes [s]",
                                   json_schema_extra={"unit": "s"})  # fmt: skip
    max_clients: int = Field(50, ge=1, le=10_000, description="live-update connections at once")
    max_connections: int = Field(
        DEFAULT_MAX_CONNECTIONS,
        ge=1,
        le=10_000,
        description="HTTP connections at once (the oldest idle one closed for a newcomer)",
    )
    idle_timeout_s: float = Field(
        DEFAULT_IDLE_TIMEOUT_S,
        gt=0.0,
        le=3600.0,
        json_schema_extra={"unit": "s"},
        description="a request head complete, or a kept-alive connection used, within [s]",
    )
    history_max_points: int = Field(2000, ge=10, le=100_000, description="point budget of one trend")


class _Client:
    """One live-update connection: the newest message of each kind, and a wake-up."""

    __slots__ = ("pending", "wake")

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}
        self.wake = asyncio.Event()

    def offer(self, msgs: Mapping[str, str]) -> None:
        self.pending.update(msgs)
        self.wake.set()

    def take(self) -> list[tuple[str, str]]:
        out = list(self.pending.items())
        self.pending.clear()
        self.wake.clear()
        return out


class HmiServer:
    """The HMI on the current event loop (see the module docstring).

    Args:
        source: where the data comes from.
        config: listen address, sessions, push rate.
        users: the OPC UA mirror's users (``OpcUaSecurityConfig.users``); none: nobody can log in.
        login_policy: back-off and lockout per source and name (the mirror's
            ``OpcUaSecurityConfig.login``; None: the ``LoginPolicy`` defaults).
        anonymous: fallback for ``config.anonymous`` None ("read_only" when there is no security).
        clock: monotonic wall clock [s] (sessions, push pacing).
    """

    def __init__(
        self,
        source: HmiSource,
        config: HmiConfig | None = None,
        *,
        users: Mapping[str, UserEntry] | None = None,
        anonymous: Literal["read_only", "refuse"] = "read_only",
        clock: Callable[[], float] = time.monotonic,
        login_policy: LoginPolicy | None = None,
    ) -> None:
        self.source = source
        self.config = cfg = config or HmiConfig()
        self.auth = Auth(dict(users or {}), cfg.anonymous or anonymous, cfg.session_idle_s, clock, login_policy)
        self.clock = clock
        self._clients: set[_Client] = set()
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._runner: CappedAppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.port = cfg.port
        #: push rounds sent (a message went to the clients)
        self.pushes = 0
        self._plant = plant_info(source.layout)
        self.app = self._build()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen (raises OSError when the port is taken) and start pushing."""
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        runner = CappedAppRunner(self.app, max_connections=cfg.max_connections, idle_timeout_s=cfg.idle_timeout_s,
                                 access_log=None, handle_signals=False, shutdown_timeout=1.0)  # fmt: skip
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = getattr(site, "_server", None)
        socks = getattr(server, "sockets", None) or []
        if socks:
            self.port = int(socks[0].getsockname()[1])
        self._pump_task = asyncio.create_task(self._pump(), name="hmi-pump")
        log.info("hmi.listening", url=self.url)

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        self._closing = True
        for c in list(self._clients):
            c.wake.set()
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
            self._pump_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def clients(self) -> int:
        """Live-update connections open now."""
        return len(self._clients)

    def notify(self) -> None:
        """A new snapshot or alarm change is there (call from the loop's thread; cheap)."""
        self._wake.set()

    def notify_threadsafe(self) -> None:
        """``notify`` from another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ pushing

    def _alarm_payload(self) -> dict[str, Any]:
        am = self.source.alarms
        return {"revision": am.revision, "alarms": [a.as_dict() for a in am.listing()], "flooding": am.flooding(),
                "counts": am.counts()}  # fmt: skip

    def _messages(self, last_seq: int, last_rev: int) -> tuple[dict[str, str], int, int]:
        msgs: dict[str, str] = {}
        snap = self.source.snapshot()
        if snap is not None and snap.seq != last_seq:
            msgs["snapshot"] = json.dumps(snap.as_dict(), separators=(",", ":"))
            last_seq = snap.seq
        rev = self.source.alarms.revision
        if rev != last_rev:
            msgs["alarms"] = json.dumps(self._alarm_payload(), separators=(",", ":"), default=_json_default)
            last_rev = rev
        return msgs, last_seq, last_rev

    async def _pump(self) -> None:
        last_seq, last_rev, next_push = -1, -1, 0.0
        while True:
            await self._wake.wait()
            wait = next_push - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            next_push = self.clock() + self.config.push_interval_s
            try:
                msgs, last_seq, last_rev = self._messages(last_seq, last_rev)
            except Exception:
                log.exception("hmi.push_failed")
                continue
            if msgs and self._clients:
                self.pushes += 1
                for c in self._clients:
                    c.offer(msgs)

    # ------------------------------------------------------------------ app

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._security_mw], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/", self._index)
        r.add_static("/static/", static_dir(), show_index=False, follow_symlinks=False)
        r.add_get("/api/session", self._session)
        r.add_post("/api/login", self._login)
        r.add_post("/api/logout", self._logout)
        r.add_get("/api/plant", self._plant_h)
        r.add_get("/api/snapshot", self._snapshot)
        r.add_get("/api/stream", self._stream)
        r.add_get("/api/alarms", self._alarms)
        r.add_post("/api/alarms/{action}", self._alarm_action)
        r.add_post("/api/mode", self._mode)
        r.add_post("/api/samples", self._sample)
        r.add_get("/api/history", self._history)
        r.add_get("/api/history/group", self._history_group)
        r.add_get("/api/journal", self._journal)
        r.add_get("/api/ae", self._ae)
        r.add_get("/api/plan", self._plan)
        return app

    @web.middleware
    async def _security_mw(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        session = self._who(request)
        path = request.path
        if (path.startswith("/api/") and path not in ("/api/session", "/api/login") and session is None
                and self.auth.anonymous == "refuse"):  # fmt: skip
            resp: web.StreamResponse = _error(401, "log in first")
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                if exc.status >= 400 and path.startswith("/api/"):
                    resp = _error(exc.status, exc.reason)
                else:
                    raise
        if not resp.prepared:
            h = resp.headers
            h.setdefault("Content-Security-Policy", CSP)
            h.setdefault("X-Content-Type-Options", "nosniff")
            h.setdefault("Referrer-Policy", "no-referrer")
            h.setdefault("X-Frame-Options", "DENY")
            if path.startswith("/api/"):
                h.setdefault("Cache-Control", "no-store")
        return resp

    # ------------------------------------------------------------------ helpers

    def _who(self, request: web.Request) -> Session | None:
        """The request's live session (its cookie), or None."""
        return self.auth.session(request.cookies.get(COOKIE))

    def _operator(self, request: web.Request) -> Session:
        """The operator's session of a change request (else an HTTP error)."""
        s = self._who(request)
        if s is None:
            raise web.HTTPUnauthorized(reason="log in as an operator first")
        if not _same_origin(request):
            raise web.HTTPForbidden(reason="cross-origin request refused")
        if not self.auth.csrf_ok(s, request.headers.get("X-CSRF-Token")):
            raise web.HTTPForbidden(reason="missing or wrong CSRF token")
        if not s.operator:
            raise web.HTTPForbidden(reason=f"{s.user} is a viewer: operators only")
        return s

    # ------------------------------------------------------------------ pages and session

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    def _session_body(self, s: Session | None) -> dict[str, Any]:
        return {"user": s.user if s else None, "role": s.role if s else None, "csrf": s.csrf if s else None,
                "anonymous": self.auth.anonymous, "plant": self.source.layout.plant,
                "logins": bool(self.auth.users)}  # fmt: skip

    async def _session(self, request: web.Request) -> web.Response:
        return web.json_response(self._session_body(self._who(request)))

    async def _login(self, request: web.Request) -> web.Response:
        if not _same_origin(request):
            return _error(403, "cross-origin request refused")
        body = await _json_body(request)
        user, password = str(body.get("user") or ""), str(body.get("password") or "")
        if not user or not password:
            return _error(400, "user and password are required")
        source = request.remote or "unknown"
        why = self.auth.refused(user, source)
        if why is not None:
            log.warning("hmi.login_refused", user=user, peer=source, why=why)
            return _error(429, why)
        s = await self.auth.login(user, password, source)
        if s is None:
            log.warning("hmi.login_refused", user=user, peer=request.remote)
            return _error(401, "wrong user name or password")
        log.info("hmi.login", user=user, role=s.role, peer=request.remote)
        resp = web.json_response(self._session_body(s))
        resp.set_cookie(COOKIE, s.id, httponly=True, samesite="Strict", secure=self.config.cookie_secure, path="/")
        return resp

    async def _logout(self, request: web.Request) -> web.Response:
        s = self._who(request)
        if s is not None:
            if not self.auth.csrf_ok(s, request.headers.get("X-CSRF-Token")):
                return _error(403, "missing or wrong CSRF token")
            self.auth.logout(s.id)
            log.info("hmi.logout", user=s.user)
        resp = web.json_response(self._session_body(None))
        resp.del_cookie(COOKIE, path="/")
        return resp

    # ------------------------------------------------------------------ data

    async def _plant_h(self, request: web.Request) -> web.Response:
        return web.json_response(self._plant)

    async def _snapshot(self, request: web.Request) -> web.Response:
        snap = self.source.snapshot()
        if snap is None:
            return _error(503, "no scan yet")
        return web.json_response(snap.as_dict())

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= self.config.max_clients:
            return _error(503, "too many live connections")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no", "Content-Security-Policy": CSP})  # fmt: skip
        await resp.prepare(request)
        client = _Client()
        first, _seq, _rev = self._messages(-1, -1)  # the current state at once
        client.offer(first)
        self._clients.add(client)
        try:
            await resp.write(b"retry: 2000\n\n")
            while not self._closing:
                try:
                    await asyncio.wait_for(client.wake.wait(), KEEPALIVE_S)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                for name, data in client.take():
                    await resp.write(f"event: {name}\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(client)
        return resp

    async def _alarms(self, request: web.Request) -> web.Response:
        am = self.source.alarms
        alarms = am.listing(include_normal=request.query.get("all") == "1")
        body = {"revision": am.revision, "alarms": [a.as_dict() for a in alarms], "flooding": am.flooding(),
                "counts": am.counts()}  # fmt: skip
        return web.json_response(body, dumps=_dumps)

    async def _alarm_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ("ack", "shelve", "unshelve"):
            return _error(404, f"no alarm action {action!r} (ack, shelve, unshelve)")
        s = self._operator(request)
        body = await _json_body(request)
        key = str(body.get("key") or "")
        am, now = self.source.alarms, self.source.now()
        try:
            if action == "ack":
                recs = am.acknowledge(key, s.user, now, str(body.get("comment") or ""))
            elif action == "shelve":
                dur = body.get("duration_s")
                recs = am.shelve(key, s.user, str(body.get("reason") or ""), now,
                                 None if dur in (None, "") else _number(dur, "duration_s"))  # fmt: skip
            else:
                recs = am.unshelve(key, s.user, now)
        except AlarmActionError as exc:
            return _error(409, str(exc))
        self.source.record_alarms(recs)
        log.info("hmi.alarm_action", action=action, key=key, user=s.user)
        self.notify()
        return web.json_response({"records": [{"key": r.key, "event": r.event, "from": r.old_state, "to": r.new_state}
                                              for r in recs], "alarm": am.get(key).as_dict()}, dumps=_dumps)  # fmt: skip

    async def _mode(self, request: web.Request) -> web.Response:
        s = self._operator(request)
        body = await _json_body(request)
        mode = str(body.get("mode") or "")
        reason = str(body.get("reason") or "")
        try:
            previous = await self.source.request_mode(mode, s.user, reason)
        except ValueError as exc:
            return _error(409, str(exc))
        log.info("hmi.mode", mode=mode, previous=previous, user=s.user)
        self.notify()
        return web.json_response({"mode": mode, "previous": previous})

    async def _sample(self, request: web.Request) -> web.Response:
        """An operator's bath sample: journalled with the user, given to the observer."""
        s = self._operator(request)
        body = await _json_body(request)
        try:
            took = self.source.enter_sample(body, s.user)
        except OperatorInputError as exc:
            return _error(422, "; ".join(exc.issues))
        except ValueError as exc:
            return _error(409, str(exc))
        log.info("hmi.sample", user=s.user, room=took["room"], cell=took["cell"], values=took["values"])
        return web.json_response(took)

    def _range(self, request: web.Request) -> tuple[float, float, int]:
        q = request.query
        snap = self.source.snapshot()
        end = _number(q["end"], "end") if q.get("end") else (snap.t if snap is not None else time.time())
        start = _number(q["start"], "start") if q.get("start") else end - 3600.0
        points = int(_number(q["points"], "points")) if q.get("points") else self.config.history_max_points
        if not start <= end:
            raise web.HTTPBadRequest(reason=f"start {start} is after end {end}")
        return start, end, max(10, min(points, 100_000))

    async def _history(self, request: web.Request) -> web.Response:
        from potline.history import HistoryError

        tag = request.query.get("tag", "")
        start, end, points = self._range(request)
        try:
            s = await self.source.history(tag, start, end, points)
        except HistoryError as exc:
            return _error(404, str(exc))
        return web.json_response(s.as_dict())

    async def _history_group(self, request: web.Request) -> web.Response:
        from potline.history import HistoryError

        group = request.query.get("group", "")
        start, end, points = self._range(request)
        try:
            g = await self.source.history_group(group, start, end, points)
        except HistoryError as exc:
            return _error(404, str(exc))
        mean = [[None if not math.isfinite(x) else round(x, 4) for x in col] for col in g.mean.T.tolist()]
        return web.json_response({"group": g.group, "unit": g.unit, "resolution_s": g.resolution_s,
                                  "tags": list(g.tags), "t": g.t.tolist(), "mean": mean})  # fmt: skip

    async def _journal(self, request: web.Request) -> web.Response:
        from potline.journal import JournalError

        q = request.query
        cell = q.get("cell")
        try:
            jq = JournalQuery(
                categories=tuple(c for c in q.getall("category", []) if c),
                kinds=tuple(k.strip() for k in q.get("kind", "").split(",") if k.strip()),
                room=q.get("room") or None,
                cell=int(_number(cell, "cell")) if cell else None,
                since=_iso(q.get("since"), "since"),
                until=_iso(q.get("until"), "until"),
                limit=max(1, min(int(_number(q.get("limit", "200"), "limit")), 5000)),
            )
            events = await self.source.journal(jq)
        except JournalError as exc:
            return _error(503, str(exc))
        return web.json_response({"events": [e.as_dict() for e in events]}, dumps=_dumps)

    async def _ae(self, request: web.Request) -> web.Response:
        from potline.journal import JournalError

        limit = max(1, min(int(_number(request.query.get("limit", "100"), "limit")), 2000))
        try:
            events = await self.source.journal(JournalQuery(kinds=("ae_start", "ae_end"), limit=2 * limit))
        except JournalError as exc:
            return _error(503, str(exc))
        return web.json_response({"anode_effects": pair_anode_effects(events)[:limit]}, dumps=_dumps)

    async def _plan(self, request: web.Request) -> web.Response:
        """The plan in force, its step, its constraints and each line's grid shed (404: no plans here)."""
        status = getattr(self.source, "plan_status", None)
        if status is None:
            return _error(404, "this HMI has no plan execution")
        return web.json_response(status(), dumps=_dumps)


def pair_anode_effects(events: list[Any]) -> list[dict[str, Any]]:
    """AE starts and ends (newest first) -> one row per AE, newest first (an open one has no end)."""
    open_: dict[tuple[str | None, int | None], dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for e in sorted(events, key=lambda e: e.id or 0):
        key = (e.room, e.cell)
        if e.kind == "ae_start":
            row = {"room": e.room, "cell": e.cell, "line": e.line, "start": e.ts_utc, "start_plant_s": e.t_plant_s,
                   "end": None, "duration_s": None, "peak_v": e.value}  # fmt: skip
            open_[key] = row
            rows.append(row)
        elif e.kind == "ae_end":
            found = open_.pop(key, None)
            row = found if found is not None else {}
            if found is None:  # its start is older than the page
                row.update({"room": e.room, "cell": e.cell, "line": e.line, "start": None, "start_plant_s": None})
                rows.append(row)
            row.update({"end": e.ts_utc, "duration_s": e.data.get("duration_s"), "peak_v": e.value})
    return rows[::-1]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={"Cache-Control": "no-store"})


def _same_origin(request: web.Request) -> bool:
    """No ``Origin`` (same-origin GET, curl) or one naming this host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin in (f"http://{request.host}", f"https://{request.host}")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="send application/json")
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="expected a JSON object")
    return body


def _number(text: Any, what: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise web.HTTPBadRequest(reason=f"{what}: expected a number, got {str(text)[:40]!r}") from None
    if not math.isfinite(v):
        raise web.HTTPBadRequest(reason=f"{what}: expected a finite number, got {v}")
    return v


def _iso(text: str | None, what: str) -> str | None:
    """An ISO-8601 time (naive = UTC) as the journal's UTC text, or None."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{what}: expected an ISO-8601 time, got {text[:40]!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def _dumps(obj: Any) -> str:
    return json.dumps(_finite(obj), default=_json_default)


def _finite(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o
