"""The owner's page: Flask routes and Jinja2 templates (agent/ownerpage/templates), every asset shipped.

The routes render what OwnerBackend gives and pass the owner's requests back to it; who may ask is decided
in agent/ownerpage/guard.py before any route runs.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, g, redirect, render_template, request, url_for

from agent.model import ALL_CATEGORIES
from agent.ownerpage import guard
from agent.ownerpage.backend import OwnerBackend
from agent.ownerpage.config import OwnerPageConfig
from agent.ownerpage.pairing import Pairing, PairingError
from agent.privacy.consent import EXPIRY_CHOICES
from agent.privacy.transforms import APPROXIMATE_SIZE, LOCATION_LEVELS
from agent.reconcile import describe_batch, describe_upload
from agent.timespec import iso_local

EXPIRY_WORDS = {"drive": "until the next ignition", "7d": "for 7 days", "90d": "for 90 days", "1y": "for a year"}
MAX_DOWNLOADS = 8  # exports kept for their download link (in memory, newest)


def create_app(backend: OwnerBackend, pairing: Pairing, config: OwnerPageConfig, port: int) -> Flask:
    here = Path(__file__).parent
    app = Flask(__name__, template_folder=str(here / "templates"), static_folder=str(here / "static"))
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024 * 1024)
    hosts = guard.allowed_hosts(config.listen, port)
    downloads: OrderedDict[str, tuple[str, str, bytes]] = OrderedDict()
    app.jinja_env.filters["when"] = lambda t: iso_local(t) if t is not None else "-"

    @app.before_request
    def who_may_ask() -> Any:
        refusal = (guard.check_peer(request.remote_addr, config.loopback_only)
                   or guard.check_host(request.host, hosts)
                   or guard.check_origin(request.method, request.headers.get("Origin"),
                                         request.headers.get("Referer"), request.headers.get("Sec-Fetch-Site"),
                                         hosts))
        if refusal is not None:
            return _refused(refusal)
        g.session = pairing.session(request.cookies.get(guard.COOKIE))
        if request.endpoint in ("pair", "static"):
            return None
        if g.session is None:
            if request.method in guard.SAFE_METHODS:
                return redirect(url_for("pair"))
            return _refused(guard.Refusal(403, "not paired: pair this browser first"))
        refusal = guard.check_csrf(request.method, request.form.get("csrf"), g.session.csrf)
        return _refused(refusal) if refusal is not None else None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                       "frame-ancestors 'none'; form-action 'self'")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    def page(template: str, **values: Any) -> str:
        return render_template(template, csrf=g.session.csrf if g.get("session") else "", **values)

    @app.route("/pair", methods=["GET", "POST"])
    def pair() -> Any:
        if request.method == "GET":
            return page("pair.html", error=None)
        try:
            token, session = pairing.pair(request.form.get("code", ""))
        except PairingError as exc:
            return page("pair.html", error=str(exc)), 403
        response = redirect(url_for("home"))
        response.set_cookie(guard.COOKIE, token, max_age=int(session.expires - time.time()), httponly=True,
                            samesite="Strict", secure=False, path="/")
        return response

    @app.get("/")
    def home() -> str:
        days = backend.days()
        today = datetime.now().astimezone().date().isoformat()
        return page("home.html", today=next((d for d in days if d.date == today), None),
                    fingerprint=backend.fingerprint(), ledger=backend.ledger_status(), sharing=backend.sharing())

    @app.get("/sharing")
    def sharing() -> str:
        return page("sharing.html", sharing=backend.sharing(), expiries=EXPIRY_CHOICES, words=EXPIRY_WORDS,
                    levels=LOCATION_LEVELS, sizes=APPROXIMATE_SIZE, message=request.args.get("message"))

    @app.post("/sharing/grant")
    def grant() -> Any:
        category = _category(request.form.get("category"))
        expiry = request.form.get("expiry", "drive")
        if expiry not in EXPIRY_CHOICES:
            abort(400, f"unknown expiry {expiry!r}")
        level = request.form.get("level") or None
        purpose = (request.form.get("purpose") or "").strip() or None
        try:
            result, _ = backend.consent("consent.grant", category=category, expiry=expiry, level=level,
                                        purpose=purpose)
        except Exception as exc:  # the policy's refusal, in its own words
            return redirect(url_for("sharing", message=f"not granted: {exc}"))
        shown = f" at {level} ({APPROXIMATE_SIZE.get(level, '')})" if level else ""
        return redirect(url_for("sharing", message=f"{category} shared{shown} {EXPIRY_WORDS[expiry]} "
                                                   f"(consent version {result['version']})"))

    @app.get("/sharing/revoke")
    def revoke_confirm() -> str:
        category = _category(request.args.get("category"))
        return page("revoke.html", category=category, unsent=backend.unsent_with(category))

    @app.post("/sharing/revoke")
    def revoke() -> str:
        category = _category(request.form.get("category"))
        before = time.time()
        result, running = backend.consent("consent.revoke", category=category)
        purged = backend.purged_since(before - 1) if running else None
        return page("revoked.html", category=category, changed=result is not None, purged=purged,
                    unsent=backend.unsent_with(category), running=running)

    @app.post("/sharing/zones")
    def zone_add() -> Any:
        try:
            zone, _ = backend.consent("consent.zones.add", latitude=request.form.get("lat"),
                                      longitude=request.form.get("lon"), radius_m=request.form.get("radius"),
                                      name=request.form.get("name", ""))
        except Exception as exc:
            return redirect(url_for("sharing", message=f"zone not added: {exc}"))
        return redirect(url_for("sharing", message=f"privacy zone {zone['id']} added ({zone['radius_m']:g} m)"))

    @app.post("/sharing/zones/remove")
    def zone_remove() -> Any:
        backend.consent("consent.zones.remove", zone_id=request.form.get("zone", ""))
        return redirect(url_for("sharing", message="privacy zone removed"))

    @app.get("/left")
    def left() -> str:
        return page("left.html", days=backend.days(), ledger=backend.ledger_status())

    @app.get("/trips")
    def trips() -> str:
        archive = backend.archive()
        try:
            return page("trips.html", trips=archive.trips(), size=archive.size_bytes(), archive=archive,
                        message=request.args.get("message"))
        finally:
            archive.close()

    @app.post("/trips/limits")
    def trip_limits() -> Any:
        archive = backend.archive()
        try:
            days, megabytes = float(request.form.get("days", "")), float(request.form.get("mb", ""))
            archive.set_limits(days, int(megabytes * 1_000_000), persist=True)
            dropped = archive.prune()
        except ValueError as exc:
            return redirect(url_for("trips", message=f"not changed: {exc}"))
        finally:
            archive.close()
        return redirect(url_for("trips", message=f"trips are kept {days:g} days, at most {megabytes:g} MB; "
                                                 f"{dropped} older trip(s) deleted now"))

    @app.get("/trips/<int:trip_id>")
    def trip(trip_id: int) -> str:
        archive = backend.archive()
        try:
            found = archive.trip(trip_id)
            if found is None:
                abort(404)
            return page("trip.html", trip=found, keys=archive.signal_keys(trip_id),
                        positions=len(archive.positions(trip_id)))
        finally:
            archive.close()

    @app.get("/trips/<int:trip_id>/<kind>")
    def trip_file(trip_id: int, kind: str) -> Response:
        from agent.owner import trip_files

        archive = backend.archive()
        try:
            if archive.trip(trip_id) is None:
                abort(404)
            if kind == "plot.png":
                return Response(trip_files.trip_plot_png(archive, trip_id), mimetype="image/png")
            makers = {"trip.csv": (trip_files.trip_csv, "text/csv"),
                      "trip.gpx": (trip_files.trip_gpx, "application/gpx+xml"),
                      "trip.json": (lambda a, t: _json(trip_files.trip_json(a, t)), "application/json")}
            if kind not in makers:
                abort(404)
            make, mimetype = makers[kind]
            return _download(make(archive, trip_id), mimetype, f"trip-{trip_id}.{kind.split('.')[1]}")
        finally:
            archive.close()

    @app.get("/incidents")
    def incidents() -> str:
        return page("incidents.html", incidents=backend.incidents(), fingerprint=backend.fingerprint())

    @app.post("/incidents/export")
    def incident_export() -> str:
        incident_id = request.form.get("incident", "")
        if incident_id not in {info.id for info in backend.incidents()}:
            abort(404)
        made = backend.export_incident(incident_id)
        token = secrets.token_urlsafe(16)
        downloads[token] = (made.name, "application/zip", made.data)
        while len(downloads) > MAX_DOWNLOADS:
            downloads.popitem(last=False)
        return page("exported.html", export=made, token=token, size=len(made.data))

    @app.get("/downloads/<token>")
    def download(token: str) -> Response:
        if token not in downloads:
            abort(404)
        name, mimetype, data = downloads[token]
        return _download(data, mimetype, name)

    @app.route("/backend", methods=["GET", "POST"])
    def backend_holds() -> Any:
        """The backend's answer to a data-access request (`vehicle-sim cloud export`), against the ledger."""
        if request.method == "GET":
            return page("backend.html", result=None, error=None)
        try:
            result = backend.reconcile({f.filename: f.read() for f in request.files.getlist("files")})
        except ValueError as exc:
            return page("backend.html", result=None, error=str(exc)), 400
        return page("backend.html", result=result, error=None, upload=describe_upload, batch=describe_batch)

    @app.get("/forget")
    def forget_confirm() -> str:
        return page("forget.html", incidents=backend.incidents())

    @app.post("/forget")
    def forget() -> Response:
        if request.form.get("confirm") != "forget me":
            return redirect(url_for("forget_confirm"))
        done = backend.forget_me()
        pairing.end_sessions()
        response = Response(render_template("forgotten.html", done=done, csrf=""))
        response.delete_cookie(guard.COOKIE, path="/")
        return response

    return app


def _category(value: str | None) -> str:
    if value not in ALL_CATEGORIES:
        abort(400, f"unknown category {value!r}")
    return value


def _json(data: Any) -> str:
    return json.dumps(data, indent=1, default=str)


def _download(data: str | bytes, mimetype: str, name: str) -> Response:
    return Response(data, mimetype=mimetype, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _refused(refusal: guard.Refusal) -> Response:
    return Response(render_template("refused.html", reason=refusal.reason, csrf=""), status=refusal.status)
